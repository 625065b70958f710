package v1

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// The route table, by the path after /v1/ and the method.
var (
	sandboxesRoot map[string]*route
	byName        map[string]map[string]*route // by the path after /v1/sandboxes/by-name/{name}
	byID          map[string]map[string]*route // by the path after /v1/sandboxes/{id}
	volumesRoot   map[string]*route
	volumeDefault map[string]*route
	volumeByID    map[string]map[string]*route // by the path after /v1/volumes/{id}
)

func init() {
	const (
		read   = auth.ScopeSandboxRead
		create = auth.ScopeSandboxCreate
		exec   = auth.ScopeSandboxExec
		del    = auth.ScopeSandboxDelete
	)
	sb := func(name string, scope auth.Scope, changes bool, serve func(*Handler, *Call)) *route {
		return &route{name: name, scope: scope, changes: changes, notFound: codeSandboxNotFound,
			serve: func(c *Call) { serve(c.h, c) }}
	}
	sandboxesRoot = map[string]*route{
		http.MethodGet:  sb("GET /v1/sandboxes", read, false, (*Handler).list),
		http.MethodPost: sb("POST /v1/sandboxes", create, true, (*Handler).create),
	}
	sandboxesRoot[http.MethodPost].start = true
	sandboxesRoot[http.MethodPost].invalid = codeInvalidConfig
	byName = map[string]map[string]*route{
		"": {http.MethodGet: sb("GET /v1/sandboxes/by-name/{name}", read, false, (*Handler).get),
			http.MethodDelete: sb("DELETE /v1/sandboxes/by-name/{name}", del, true, (*Handler).remove)},
		"start": {http.MethodPost: sb("POST /v1/sandboxes/by-name/{name}/start", create, true, (*Handler).start)},
		"stop":  {http.MethodPost: sb("POST /v1/sandboxes/by-name/{name}/stop", del, true, (*Handler).stop)},
	}
	byName["start"][http.MethodPost].start = true
	for _, methods := range byName {
		for _, rt := range methods {
			rt.byName = true
		}
	}
	byID = map[string]map[string]*route{
		"": {http.MethodGet: sb("GET /v1/sandboxes/{id}", read, false, (*Handler).get),
			http.MethodDelete: sb("DELETE /v1/sandboxes/{id}", del, true, (*Handler).remove)},
		"start": {http.MethodPost: sb("POST /v1/sandboxes/{id}/start", create, true, (*Handler).start)},
		"stop":  {http.MethodPost: sb("POST /v1/sandboxes/{id}/stop", del, true, (*Handler).stop)},
		"logs":  {http.MethodGet: sb("GET /v1/sandboxes/{id}/logs", read, false, (*Handler).logStream)},
		// The upgrade is audited: it opens a socket that runs code.
		"agent": {http.MethodGet: sb("GET /v1/sandboxes/{id}/agent", exec, true, (*Handler).agent)},
	}
	byID["start"][http.MethodPost].start = true

	vol := func(name string, scope auth.Scope, changes bool, serve func(*Handler, *Call)) *route {
		return &route{name: name, scope: scope, changes: changes, notFound: codeVolumeNotFound,
			serve: func(c *Call) { serve(c.h, c) }}
	}
	file := func(name string, changes bool, serve func(*Handler, *Call)) *route {
		// A volume's files are read and written with the scope that
		// reads and writes a sandbox's files.
		return &route{name: name, scope: exec, changes: changes, notFound: codeFileNotFound, invalid: codeInvalidVolumePath,
			serve: func(c *Call) { serve(c.h, c) }}
	}
	volumesRoot = map[string]*route{
		http.MethodGet:  vol("GET /v1/volumes", read, false, (*Handler).listVolumes),
		http.MethodPost: vol("POST /v1/volumes", create, true, (*Handler).createVolume),
	}
	volumeDefault = map[string]*route{http.MethodGet: vol("GET /v1/volumes/default", read, false, (*Handler).defaultVolume)}
	volumeByID = map[string]map[string]*route{
		"": {http.MethodDelete: vol("DELETE /v1/volumes/{id}", del, true, (*Handler).deleteVolume)},
		"files": {http.MethodGet: file("GET /v1/volumes/{id}/files", false, (*Handler).listFiles),
			http.MethodDelete: file("DELETE /v1/volumes/{id}/files", true, (*Handler).removeFile)},
		"files/content": {http.MethodGet: file("GET /v1/volumes/{id}/files/content", false, (*Handler).readFile),
			http.MethodPut: file("PUT /v1/volumes/{id}/files/content", true, (*Handler).writeFile)},
		"files/stat":   {http.MethodGet: file("GET /v1/volumes/{id}/files/stat", false, (*Handler).statFile)},
		"files/exists": {http.MethodGet: file("GET /v1/volumes/{id}/files/exists", false, (*Handler).fileExists)},
		"files/mkdir":  {http.MethodPost: file("POST /v1/volumes/{id}/files/mkdir", true, (*Handler).mkdir)},
		"files/copy":   {http.MethodPost: file("POST /v1/volumes/{id}/files/copy", true, (*Handler).copyFile)},
		"files/rename": {http.MethodPost: file("POST /v1/volumes/{id}/files/rename", true, (*Handler).renameFile)},
	}
}

// sandboxRecord finds the call's sandbox, by name or by id, in the call's
// namespace: another namespace's sandbox does not exist (NotFound). The
// audit record then names it.
func (c *Call) sandboxRecord() (sandbox.Record, error) {
	var rec sandbox.Record
	var err error
	if c.route.byName {
		var id sandbox.ID
		if id, err = sandbox.ParseID(c.NS, c.args[0]); err != nil {
			return rec, errdefs.NotFoundf("no sandbox named %.64q: %v", c.args[0], err)
		}
		rec, err = c.h.svc.Get(c.ctx(), id)
	} else {
		rec, err = c.h.svc.GetByUUID(c.ctx(), c.NS, c.args[0])
	}
	if err != nil {
		return rec, err
	}
	c.action.Sandbox = rec.ID.Name()
	return rec, nil
}

// admitSandbox admits a call on one sandbox and finds it.
func (c *Call) admitSandbox() (sandbox.Record, error) {
	if c.route.byName {
		c.action.Sandbox = c.args[0]
	}
	if err := c.admit(nil); err != nil {
		return sandbox.Record{}, err
	}
	return c.sandboxRecord()
}

func (h *Handler) get(c *Call) {
	rec, err := c.admitSandbox()
	if err != nil {
		c.fail(err)
		return
	}
	c.finish(sandboxJSON(rec), nil)
}

// listPage is the answer of GET /v1/sandboxes.
type listPage struct {
	Data       []Sandbox `json:"data"`
	NextCursor *string   `json:"next_cursor"`
}

// List bounds: the SDK's default page, and the API's largest.
const (
	defaultLimit = 20
	maxLimit     = 100
)

func (h *Handler) list(c *Call) {
	q := c.r.URL.Query()
	o := sandbox.ListOptions{Limit: defaultLimit}
	err := c.admit(func() error {
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return errdefs.Invalidf("limit %.32q must be a whole number from 1 to %d", s, maxLimit)
			}
			o.Limit = min(n, maxLimit)
		}
		if s := q.Get("cursor"); s != "" {
			after, err := base64.RawURLEncoding.DecodeString(s)
			if err != nil || len(after) == 0 {
				return errdefs.Invalidf("cursor %.64q is not one this server gave", s)
			}
			o.After = string(after)
		}
		if s := q.Get("labels"); s != "" {
			if err := json.Unmarshal([]byte(s), &o.Labels); err != nil {
				return errdefs.Invalidf("labels must be a JSON object of strings, such as {\"team\":\"a\"}")
			}
		}
		return nil
	})
	if err != nil {
		c.fail(err)
		return
	}
	recs, next, err := h.svc.List(c.ctx(), c.NS, o)
	if err != nil {
		c.fail(err)
		return
	}
	page := listPage{Data: make([]Sandbox, 0, len(recs))}
	for _, r := range recs {
		page.Data = append(page.Data, sandboxJSON(r))
	}
	if next != "" {
		cur := base64.RawURLEncoding.EncodeToString([]byte(next))
		page.NextCursor = &cur
	}
	c.finish(page, nil)
}

// checkStartQuery checks the query of a create or start: msb creates and
// starts in one step and answers once the sandbox runs.
func checkStartQuery(c *Call) error {
	q := c.r.URL.Query()
	if s := q.Get("start"); s != "" && s != "true" {
		return errdefs.Invalidf("start=%.16s: msb creates and starts a sandbox in one step; leave start=true", s)
	}
	if s := q.Get("wait_for"); s != "" && s != "running" {
		return errdefs.Invalidf("wait_for=%.16s: msb answers once the sandbox runs (wait_for=running)", s)
	}
	if s := q.Get("wait_timeout"); s != "" {
		if n, err := strconv.Atoi(s); err != nil || n < 0 {
			return errdefs.Invalidf("wait_timeout=%.16s must be a number of seconds", s)
		}
	}
	return nil
}

func (h *Handler) create(c *Call) {
	var spec Spec
	decodeErr := c.decodeBody(&spec)
	c.action.Sandbox = spec.Name
	var id sandbox.ID
	var cfg sandbox.Config
	err := c.admit(func() error {
		if decodeErr != nil {
			return withCode(codeInvalidConfig, decodeErr)
		}
		if err := checkStartQuery(c); err != nil {
			return err
		}
		var err error
		if id, err = sandbox.ParseID(c.NS, spec.Name); err != nil {
			return invalidConfig("name", "%v", err)
		}
		cfg, err = spec.config()
		return err
	})
	if err != nil {
		c.fail(err)
		return
	}
	for i, v := range cfg.Volumes {
		if _, err := h.vols.Get(c.NS, v.Host); err != nil {
			if errdefs.Is(err, errdefs.NotFound) {
				err = withCode(codeVolumeNotFound, errdefs.NotFoundf("mounts: no volume named %q (mount %d): create it first with Volume.builder(%q).create()", v.Host, i, v.Host))
			}
			c.fail(err)
			return
		}
	}
	h.mu.Lock()
	busy := h.creating[id]
	h.creating[id] = true
	h.mu.Unlock()
	if busy {
		c.fail(withCode(codeNameExists, errdefs.Conflictf("sandbox %q is being created", id.Name())))
		return
	}
	defer func() {
		h.mu.Lock()
		delete(h.creating, id)
		h.mu.Unlock()
	}()
	switch _, err := h.svc.Get(c.ctx(), id); {
	case err == nil:
		c.fail(withCode(codeNameExists, errdefs.Conflictf("a sandbox named %q already exists", id.Name())))
		return
	case !errdefs.Is(err, errdefs.NotFound):
		c.fail(err)
		return
	}
	c.answerStart(id, h.svc.Start(c.ctx(), id, &cfg))
}

func (h *Handler) start(c *Call) {
	if c.route.byName {
		c.action.Sandbox = c.args[0]
	}
	if err := c.admit(func() error { return checkStartQuery(c) }); err != nil {
		c.fail(err)
		return
	}
	rec, err := c.sandboxRecord()
	if err != nil {
		c.fail(err)
		return
	}
	c.answerStart(rec.ID, h.svc.Start(c.ctx(), rec.ID, nil))
}

// answerStart answers a create or start that ended with startErr: the
// sandbox object, running. A start that failed in the engine answers the
// object too, with status failed and why (the SDK raises it with the
// message); a refused one answers the error.
func (c *Call) answerStart(id sandbox.ID, startErr error) {
	rec, err := c.h.svc.Get(c.ctx(), id)
	if startErr != nil {
		if err == nil && rec.State == sandbox.StateFailed && errdefs.Classify(startErr) == errdefs.Internal {
			c.h.log.Warn("sandbox failed to start", "sandbox", id.String(), "err", startErr)
			c.report(startErr)
			c.writeJSON(http.StatusOK, sandboxJSON(rec))
			return
		}
		c.fail(startErr)
		return
	}
	c.finish(sandboxJSON(rec), err)
}

func (h *Handler) stop(c *Call) {
	rec, err := c.admitSandbox()
	if err != nil {
		c.fail(err)
		return
	}
	if err := h.svc.Stop(c.ctx(), rec.ID); err != nil {
		c.fail(err)
		return
	}
	rec, err = h.svc.Get(c.ctx(), rec.ID)
	c.finish(sandboxJSON(rec), err)
}

// message is the answer of a delete.
type message struct {
	Message string `json:"message"`
}

func (h *Handler) remove(c *Call) {
	rec, err := c.admitSandbox()
	if err != nil {
		c.fail(err)
		return
	}
	if err := h.svc.Remove(c.ctx(), rec.ID); err != nil {
		c.fail(err)
		return
	}
	c.finish(message{Message: fmt.Sprintf("sandbox %s deleted", rec.ID.Name())}, nil)
}
