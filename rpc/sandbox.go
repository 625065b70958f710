package rpc

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/sandbox"
)

// MaxTimeout bounds the timeout a client may ask of one call.
const MaxTimeout = 24 * time.Hour

// SandboxMethods returns the sandbox.* methods of CONTRACT.md, served by m.
func SandboxMethods(m sandbox.Manager) Methods {
	return Methods{
		"sandbox.start": {Scope: auth.ScopeSandboxCreate, Changes: true, StartBucket: true, Namespaced: true,
			Handle: func(ctx context.Context, c *Call) (any, error) { return start(ctx, m, c) }},
		"sandbox.stop": {Scope: auth.ScopeSandboxDelete, Changes: true, Namespaced: true,
			Handle: func(ctx context.Context, c *Call) (any, error) { return stop(ctx, m, c) }},
		"sandbox.metrics.get": {Scope: auth.ScopeSandboxRead, Namespaced: true, AllowAll: true,
			Handle: func(ctx context.Context, c *Call) (any, error) { return metrics(ctx, m, c) }},
		"sandbox.repl.run": {Scope: auth.ScopeSandboxExec, Changes: true, Namespaced: true,
			Handle: func(ctx context.Context, c *Call) (any, error) { return replRun(ctx, m, c) }},
		"sandbox.command.run": {Scope: auth.ScopeSandboxExec, Changes: true, Namespaced: true,
			Handle: func(ctx context.Context, c *Call) (any, error) { return commandRun(ctx, m, c) }},
	}
}

type target struct {
	Sandbox   string `json:"sandbox"`
	Namespace string `json:"namespace"`
}

func (t target) id() sandbox.ID { return sandbox.ID{Namespace: t.Namespace, Name: t.Sandbox} }

func start(ctx context.Context, m sandbox.Manager, c *Call) (any, error) {
	var p struct {
		target
		Config *sandbox.Config `json:"config"`
	}
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if err := m.Start(ctx, p.id(), p.Config); err != nil {
		return nil, err
	}
	return fmt.Sprintf("Sandbox %s started successfully", p.Sandbox), nil
}

func stop(ctx context.Context, m sandbox.Manager, c *Call) (any, error) {
	var p target
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if err := m.Stop(ctx, p.id()); err != nil {
		return nil, err
	}
	return fmt.Sprintf("Sandbox %s stopped successfully", p.Sandbox), nil
}

func metrics(ctx context.Context, m sandbox.Manager, c *Call) (any, error) {
	var p target
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	// c.Namespace, not p.Namespace: "*" was narrowed to the key's namespace.
	list, err := m.Metrics(ctx, c.Namespace, p.Sandbox)
	if err != nil {
		return nil, err
	}
	if list == nil {
		list = []sandbox.Metrics{}
	}
	return map[string]any{"sandboxes": list}, nil
}

// timeout converts the optional seconds param.
func timeout(seconds *float64) (time.Duration, error) {
	if seconds == nil {
		return 0, nil
	}
	s := *seconds
	if math.IsNaN(s) || s <= 0 || s > MaxTimeout.Seconds() {
		return 0, fmt.Errorf("%w: \"timeout\" must be a number of seconds above 0 and at most %d", errInvalidParams, int(MaxTimeout.Seconds()))
	}
	return time.Duration(s * float64(time.Second)), nil
}

// Language names clients send, and the interpreter each selects.
var languages = map[string]sandbox.Language{
	"python":     sandbox.Python,
	"nodejs":     sandbox.Node,
	"node":       sandbox.Node,
	"javascript": sandbox.Node,
}

func replRun(ctx context.Context, m sandbox.Manager, c *Call) (any, error) {
	var p struct {
		target
		Language string   `json:"language"`
		Code     *string  `json:"code"`
		Timeout  *float64 `json:"timeout"`
	}
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	lang, ok := languages[p.Language]
	if !ok {
		return nil, fmt.Errorf("%w: unsupported language %q: use python, nodejs, node or javascript", errInvalidParams, truncate(p.Language))
	}
	if p.Code == nil {
		return nil, fmt.Errorf("%w: \"code\" is required", errInvalidParams)
	}
	d, err := timeout(p.Timeout)
	if err != nil {
		return nil, err
	}
	res, err := m.RunCode(ctx, p.id(), lang, *p.Code, d)
	if err != nil {
		return nil, err
	}
	return map[string]any{"status": res.Status, "language": p.Language, "output": lines(res.Output)}, nil
}

func commandRun(ctx context.Context, m sandbox.Manager, c *Call) (any, error) {
	var p struct {
		target
		Command string   `json:"command"`
		Args    []string `json:"args"`
		Timeout *float64 `json:"timeout"`
	}
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Command == "" {
		return nil, fmt.Errorf("%w: \"command\" is required", errInvalidParams)
	}
	d, err := timeout(p.Timeout)
	if err != nil {
		return nil, err
	}
	if p.Args == nil {
		p.Args = []string{}
	}
	res, err := m.Exec(ctx, p.id(), sandbox.ExecRequest{Command: p.Command, Args: p.Args, Timeout: d})
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"command":   p.Command,
		"args":      p.Args,
		"exit_code": res.ExitCode,
		"success":   res.ExitCode == 0,
		"output":    lines(res.Output),
	}, nil
}

func lines(l []sandbox.Line) []sandbox.Line {
	if l == nil {
		return []sandbox.Line{}
	}
	return l
}
