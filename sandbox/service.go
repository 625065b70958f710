package sandbox

import (
	"context"
	"time"
)

// Config is a sandbox's configuration as sandbox.start receives it.
type Config struct {
	Image     string            `json:"image,omitempty"`
	Memory    int               `json:"memory,omitempty"` // MiB
	CPUs      int               `json:"cpus,omitempty"`
	Volumes   []string          `json:"volumes,omitempty"`
	Ports     []string          `json:"ports,omitempty"`
	Envs      []string          `json:"envs,omitempty"`
	DependsOn []string          `json:"depends_on,omitempty"`
	Workdir   string            `json:"workdir,omitempty"`
	Shell     string            `json:"shell,omitempty"`
	Scripts   map[string]string `json:"scripts,omitempty"`
	Exec      string            `json:"exec,omitempty"`
}

// Metrics is one sandbox's entry in sandbox.metrics.get. The pointers are
// null for a sandbox that is not running.
type Metrics struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	Running     bool     `json:"running"`
	CPUUsage    *float64 `json:"cpu_usage"`
	MemoryUsage *int64   `json:"memory_usage"`
	DiskUsage   *int64   `json:"disk_usage"`
}

// Manager is what the API layer (JSON-RPC, CLI) asks of sandboxes. Each
// method's namespace has already been authorized by the caller; names are
// validated here. Errors wrap the sentinels of errors.go.
type Manager interface {
	// Start starts the sandbox, or does nothing if it runs with the same
	// config. cfg nil reuses the config it was last started with.
	Start(ctx context.Context, id ID, cfg *Config) error
	// Stop stops the sandbox and releases what it holds; its record stays.
	Stop(ctx context.Context, id ID) error
	// Metrics lists the sandboxes of namespace ns ("*": all), or only the
	// one named name when name is not empty.
	Metrics(ctx context.Context, ns, name string) ([]Metrics, error)
	// RunCode evaluates code in the sandbox's live interpreter for lang.
	RunCode(ctx context.Context, id ID, lang Language, code string, timeout time.Duration) (ReplResult, error)
	// Exec runs a command in the sandbox.
	Exec(ctx context.Context, id ID, req ExecRequest) (ExecResult, error)
}
