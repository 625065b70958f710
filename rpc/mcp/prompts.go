package mcp

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// prompt is one MCP prompt with its handler.
type prompt struct {
	prompt  *sdk.Prompt
	handler sdk.PromptHandler
}

// prompts set an assistant up with a sandbox for one language.
var prompts = []prompt{
	sandboxPrompt("create_python_sandbox", "Python", "microsandbox/python", "python", "python-sandbox"),
	sandboxPrompt("create_node_sandbox", "Node.js", "microsandbox/node", "nodejs", "node-sandbox"),
}

func sandboxPrompt(name, lang, image, language, defaultName string) prompt {
	p := &sdk.Prompt{
		Name:        name,
		Title:       "Create a " + lang + " sandbox",
		Description: fmt.Sprintf("Start a %s sandbox, use it for a task, and stop it afterwards.", lang),
		Arguments: []*sdk.PromptArgument{
			{Name: "sandbox", Description: fmt.Sprintf("Name of the sandbox (default %q).", defaultName)},
			{Name: "namespace", Description: `Namespace of the sandbox (default "default").`},
			{Name: "task", Description: "What to do in the sandbox."},
		},
	}
	h := func(_ context.Context, req *sdk.GetPromptRequest) (*sdk.GetPromptResult, error) {
		args := req.Params.Arguments
		sandbox, namespace := args["sandbox"], args["namespace"]
		if sandbox == "" {
			sandbox = defaultName
		}
		if namespace == "" {
			namespace = "default"
		}
		start, _ := json.Marshal(map[string]any{"sandbox": sandbox, "namespace": namespace,
			"config": map[string]any{"image": image, "memory": 512, "cpus": 1}})
		stop, _ := json.Marshal(map[string]any{"sandbox": sandbox, "namespace": namespace})
		var b strings.Builder
		fmt.Fprintf(&b, "Create a %s sandbox with msb and use it.\n\n", lang)
		fmt.Fprintf(&b, "1. Call sandbox_start with %s.\n", start)
		fmt.Fprintf(&b, "2. Run %s code with sandbox_run_code (sandbox %q, namespace %q, language %q). "+
			"The interpreter lives on between calls, so definitions carry over; print what you want to see.\n", lang, sandbox, namespace, language)
		b.WriteString("3. Use sandbox_run_command for programs and shell commands (command \"sh\", args [\"-c\", \"...\"] for a shell line). " +
			"The sandbox has no network access.\n")
		fmt.Fprintf(&b, "4. When you are finished, also if something failed, call sandbox_stop with %s. Never leave the sandbox running.\n", stop)
		if task := strings.TrimSpace(args["task"]); task != "" {
			fmt.Fprintf(&b, "\nThe task:\n%s\n", task)
		}
		return &sdk.GetPromptResult{
			Description: p.Description,
			Messages:    []*sdk.PromptMessage{{Role: "user", Content: &sdk.TextContent{Text: b.String()}}},
		}, nil
	}
	return prompt{p, h}
}
