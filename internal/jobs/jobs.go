// Package jobs is the durable lifecycle of conversion jobs: it stores uploaded checkpoints on
// local disk, records each job in SQLite (the embedded default) or PostgreSQL (shared by several
// nodes), runs conversions through River on the same database and in the same transactions
// (riversqlite or riverpgxv5), retries only internal failures, recovers jobs a crashed process
// or node left running, and expires finished jobs after a retention period.
//
// It never parses a checkpoint itself (that is the Converter's job), never exposes an output
// before the converter has written and verified it nor after it stopped matching its recorded
// digest, and never knows about HTTP.
package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
)

// State is where a job is in its lifecycle. The zero value is invalid.
type State string

// Job states, as they appear in the API.
const (
	StateQueued    State = "queued"
	StateRunning   State = "running"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
	StateCanceled  State = "canceled"
)

// Terminal reports whether a job in state s will never change state again.
func (s State) Terminal() bool {
	return s == StateSucceeded || s == StateFailed || s == StateCanceled
}

// Valid reports whether s is one of the known states.
func (s State) Valid() bool {
	switch s {
	case StateQueued, StateRunning, StateSucceeded, StateFailed, StateCanceled:
		return true
	}
	return false
}

// Mode is what a job does with its checkpoint.
type Mode string

// Job modes, as they appear in the API.
const (
	// ModeConvert converts the checkpoint into a verified safetensors file (the default).
	ModeConvert Mode = "convert"
	// ModeScan only judges the checkpoint: the job succeeds with its scan report, whatever the
	// verdict, and has no output.
	ModeScan Mode = "scan"
)

// Valid reports whether m is one of the known modes.
func (m Mode) Valid() bool { return m == ModeConvert || m == ModeScan }

// JobError is the classified failure of a job. Type is the converter's own classification; its
// text is the API's error type and what the job store keeps.
type JobError struct {
	Type   fault.Kind
	Detail string
}

// Job is one conversion request and its outcome.
type Job struct {
	ID       string
	Tenant   string
	State    State
	Filename string
	Select   string
	Mode     Mode
	// AllowGlobals are the "module.name" globals the job admits as inert records.
	AllowGlobals   []string
	InputSize      int64
	InputSHA256    string
	OutputSize     int64  // set once succeeded
	OutputSHA256   string // set once succeeded
	Error          *JobError
	IdempotencyKey string
	Attempts       int
	CreatedAt      time.Time
	UpdatedAt      time.Time
	StartedAt      time.Time // zero until the first attempt starts
	FinishedAt     time.Time // zero until terminal
	ExpiresAt      time.Time // zero until terminal; files and record are removed then
	// HasReport reports whether the job has a scan report (see Service.OpenReport): a
	// succeeded job's manifest, or a failed job's refused file's report.
	HasReport bool
	// Progress is the latest progress of a job running in this process, kept in memory only;
	// nil otherwise.
	Progress *convert.Progress
}

// Converter is the part of a convert.Engine the service uses: it converts one checkpoint file
// into a verified safetensors file, or scans one. The server passes the sandbox's *Runner, so that no input
// can take it down; tests pass convert.InProcess or their own. On error no file may exist at
// dst, and errors on bad input must be classifiable with fault.KindOf.
type Converter interface {
	Convert(ctx context.Context, src, dst string, opts convert.Options) (*convert.Manifest, error)
	Scan(ctx context.Context, src string, opts convert.Options) (*convert.Manifest, error)
}

// Errors callers classify with errors.Is.
var (
	// ErrNotFound means no job with that id exists for that tenant.
	ErrNotFound = errors.New("job not found")
	// ErrConflict means the job's state does not allow the operation (canceling a finished job,
	// downloading the output of an unfinished one).
	ErrConflict = errors.New("job state conflict")
	// ErrNoReport means a finished job has no scan report: it was canceled, or failed before
	// its file was judged (or for a limit). It matches ErrConflict too.
	ErrNoReport = fmt.Errorf("%w: the job has no scan report", ErrConflict)
	// ErrIdempotencyMismatch means an idempotency key was reused with a different request.
	ErrIdempotencyMismatch = errors.New("idempotency key reused with a different request")
	// ErrStopping means the service is shutting down and accepts no new work.
	ErrStopping = errors.New("job service is stopping")
)
