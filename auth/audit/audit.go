// Package audit keeps msb's audit log: one record in the Store per
// authenticated call that changed something (sandbox start, stop, exec, key
// changes), per refused call (401, 403, 429), and per sandbox and second
// for network attempts a sandbox's policy refused. An event holds who (key id
// and label), where (namespace, sandbox, remote address), what (method) and
// how it ended; never the key text, code, commands or their output.
//
// Events are written by one goroutine through a bounded buffer, in one
// transaction per batch of whatever is queued (a group commit). Record
// returns when the event is queued and gives a channel closed once it is
// written, which a front-end waits on before it answers the call: a read
// of the audit log (audit.list, `msb server audit`) sees every event of
// every call answered before it began. If the buffer ever overflows, the
// events that did not fit are counted, logged and recorded as one "dropped"
// event: none is lost silently. Close flushes what is buffered.
package audit

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Outcomes of an event.
const (
	OK              = "ok"
	Error           = "error"
	Unauthenticated = "unauthenticated" // 401
	Forbidden       = "forbidden"       // 403
	RateLimited     = "rate_limited"    // 429
	Dropped         = "dropped"         // events lost to a full buffer
	Refused         = "refused"         // a sandbox's network attempt its policy refused
)

// MethodNetwork is the method of the events of sandboxes' refused network
// attempts, which no call made: the sandbox did.
const MethodNetwork = "sandbox.network"

// Event is one audit record.
type Event struct {
	Time     time.Time `json:"time"`
	KeyID    string    `json:"key_id"`
	KeyLabel string    `json:"key_label"`
	// KeyNamespace is the claim of the caller's key ("*" for the operator,
	// "" when no key was identified); Namespace is the one acted on.
	KeyNamespace string `json:"key_namespace"`
	Namespace    string `json:"namespace"`
	Method       string `json:"method"`
	Sandbox      string `json:"sandbox"`
	Outcome      string `json:"outcome"`
	Code         int64  `json:"code"`
	Detail       string `json:"detail"`
	Remote       string `json:"remote"`
}

// DefaultRetention is how long events are kept unless configured.
const DefaultRetention = 90 * 24 * time.Hour

// DefaultBuffer is how many events may wait for the writer.
const DefaultBuffer = 8192

// MaxField bounds every text field of an event; stores cut longer ones.
const MaxField = 256

// Options configure a Writer.
type Options struct {
	Retention time.Duration    // events older than this are pruned; 0: DefaultRetention
	Buffer    int              // 0: DefaultBuffer
	Now       func() time.Time // nil: time.Now
	Log       *slog.Logger     // nil: slog.Default()
	// PruneEvery is how often old events are pruned (and once at start);
	// 0: an hour, or the retention if shorter.
	PruneEvery time.Duration
}

// Store is where audit events live; storage.DB is the real one (SQLite).
type Store interface {
	// AppendEvents writes events at once, all or none.
	AppendEvents(ctx context.Context, events ...Event) error
	// PruneEvents deletes the events older than before and says how many.
	PruneEvents(ctx context.Context, before time.Time) (int64, error)
	// ListEvents returns the events f selects, newest first.
	ListEvents(ctx context.Context, f Filter) ([]Event, error)
}

// Writer appends events to the audit log from one goroutine.
type Writer struct {
	store   Store
	opts    Options
	ch      chan queued
	dropped atomic.Int64
	done    chan struct{}
	closed  chan struct{}
	once    sync.Once
	mu      sync.RWMutex // Record holds it shared; Close exclusively, to close ch
	stopped bool
}

// NewWriter starts the writer on store.
func NewWriter(store Store, opts Options) *Writer {
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if opts.Buffer <= 0 {
		opts.Buffer = DefaultBuffer
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.PruneEvery <= 0 {
		opts.PruneEvery = min(time.Hour, opts.Retention)
	}
	w := &Writer{store: store, opts: opts, ch: make(chan queued, opts.Buffer), done: make(chan struct{}), closed: make(chan struct{})}
	go w.run()
	return w
}

// queued is an event waiting for the writer, and the channel it closes
// once the event is written (or lost).
type queued struct {
	e       Event
	written chan struct{}
}

// closedChan is what Record returns for an event it could not queue.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Record queues e without waiting for the database; a zero Time is set to
// now. It returns a channel closed once e is written (or its write
// failed, which is logged). If the buffer is full the event is counted as
// dropped (see the package comment) and the channel is already closed.
func (w *Writer) Record(e Event) <-chan struct{} {
	if e.Time.IsZero() {
		e.Time = w.opts.Now()
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.stopped {
		// A call that outlived the server's shutdown: its event cannot be
		// written any more, but it is not lost silently.
		w.opts.Log.Error("audit event after the audit log closed: not written", "method", e.Method, "key_id", e.KeyID, "outcome", e.Outcome)
		return closedChan
	}
	q := queued{e, make(chan struct{})}
	select {
	case w.ch <- q:
		return q.written
	default:
		w.dropped.Add(1)
		return closedChan
	}
}

// Dropped returns how many events were dropped and not yet reported.
func (w *Writer) Dropped() int64 { return w.dropped.Load() }

// Close writes every queued event and stops the writer.
func (w *Writer) Close() error {
	w.once.Do(func() {
		w.mu.Lock()
		w.stopped = true
		close(w.ch)
		w.mu.Unlock()
		<-w.closed
	})
	return nil
}

const batchSize = 256

func (w *Writer) run() {
	defer close(w.closed)
	ctx := context.Background()
	w.prune(ctx)
	tick := time.NewTicker(w.opts.PruneEvery)
	defer tick.Stop()
	batch := make([]queued, 0, batchSize)
	events := make([]Event, 0, batchSize)
	for {
		select {
		case q, ok := <-w.ch:
			if !ok {
				w.reportDropped(ctx)
				return
			}
			// One transaction for what is queued now: a busy server pays
			// for a commit per batch, not per event, and no event waits
			// for more to come.
			batch = append(batch[:0], q)
		drain:
			for len(batch) < batchSize {
				select {
				case q, ok := <-w.ch:
					if !ok {
						break drain
					}
					batch = append(batch, q)
				default:
					break drain
				}
			}
			events = events[:0]
			for _, q := range batch {
				events = append(events, q.e)
			}
			w.write(ctx, events)
			for _, q := range batch {
				close(q.written)
			}
			w.reportDropped(ctx)
		case <-tick.C:
			w.prune(ctx)
		}
	}
}

// reportDropped logs and records events lost to a full buffer.
func (w *Writer) reportDropped(ctx context.Context) {
	n := w.dropped.Swap(0)
	if n == 0 {
		return
	}
	w.opts.Log.Error("audit log buffer overflowed: events were dropped", "dropped", n)
	w.write(ctx, []Event{{Time: w.opts.Now(), Outcome: Dropped, Method: "audit",
		Detail: fmt.Sprintf("%d audit events were dropped: the audit buffer was full", n)}})
}

// write stores events in one transaction; on failure it logs how many were lost.
func (w *Writer) write(ctx context.Context, events []Event) {
	if err := w.store.AppendEvents(ctx, events...); err != nil {
		w.opts.Log.Error("write audit events: they are lost", "count", len(events), "err", err)
	}
}

func (w *Writer) prune(ctx context.Context) {
	n, err := w.store.PruneEvents(ctx, w.opts.Now().Add(-w.opts.Retention))
	if err != nil {
		w.opts.Log.Warn("prune audit events", "err", err)
	} else if n > 0 {
		w.opts.Log.Info("pruned old audit events", "count", n, "retention", w.opts.Retention.String())
	}
}

// Filter selects events; zero fields select everything.
type Filter struct {
	KeyID     string    // a key id or a prefix of one
	Namespace string    // exactly this namespace
	Since     time.Time // at or after
	// Visible limits the events to those a key with this claim may see
	// ("" or "*": all): what keys of that namespace, or the operator's,
	// did in it. Events of no namespace (a refused key) and what another
	// tenant's key tried there are visible only to "*": they would show
	// one tenant the key ids, labels and addresses of another.
	Visible string
	Limit   int // newest first, at most this many; 0: 1000
}
