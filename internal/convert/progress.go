package convert

import (
	"io"
	"time"
)

// Progress is how far a running conversion or scan is. It travels as JSON from a sandbox child
// to the job service, which serves it as a running job's progress.
type Progress struct {
	// Phase is one of the Phase* constants.
	Phase string `json:"phase"`
	// BytesDone of BytesTotal: while writing, bytes of the output written, read back, compared
	// and hashed; while hashing, bytes of the source hashed.
	BytesDone  int64 `json:"bytes_done"`
	BytesTotal int64 `json:"bytes_total"`
	// TensorsDone of TensorsTotal: tensors whose bytes are all written and verified.
	TensorsDone  int `json:"tensors_done"`
	TensorsTotal int `json:"tensors_total"`
}

// The phases of an operation, in the order they come.
const (
	// PhaseScanning reads the container and its pickles, judges every global and plans the
	// tensors; nothing is counted yet.
	PhaseScanning = "scanning"
	// PhaseHashing (a scan) takes the source's SHA-256; bytes are the source's.
	PhaseHashing = "hashing"
	// PhaseWriting (a conversion) streams the tensors into the output; bytes are the output's.
	PhaseWriting = "writing"
	// PhaseVerifying (a conversion) finishes the source's digest; the verified output is then
	// synced and moved into place, the phase's last record standing meanwhile.
	PhaseVerifying = "verifying"
)

// progressEvery is the least time between two reports within a phase: often enough for a page
// that shows it live (the service promises an update a second), rarely enough to cost nothing.
const progressEvery = 250 * time.Millisecond

// reporter passes an operation's progress to Options.Progress: every phase's start and end, and
// in between no more often than progressEvery. A reporter with no callback does nothing. It is
// used by one goroutine at a time.
type reporter struct {
	fn   func(Progress)
	p    Progress
	last time.Time
}

// set records p and reports it when force is true or progressEvery has passed since the last
// report.
func (r *reporter) set(p Progress, force bool) {
	if r.fn == nil {
		return
	}
	r.p = p
	if now := time.Now(); force || now.Sub(r.last) >= progressEvery {
		r.last = now
		r.fn(p)
	}
}

// phase starts a phase with its totals, reported at once.
func (r *reporter) phase(name string, bytesTotal int64, tensorsTotal int) {
	r.set(Progress{Phase: name, BytesTotal: bytesTotal, TensorsTotal: tensorsTotal}, true)
}

// then starts a phase that keeps the counts of the one before, reported at once.
func (r *reporter) then(name string) {
	p := r.p
	p.Phase = name
	r.set(p, true)
}

// done reports the current phase complete: every byte and tensor counted.
func (r *reporter) done() {
	p := r.p
	p.BytesDone, p.TensorsDone = p.BytesTotal, p.TensorsTotal
	r.set(p, true)
}

// counter counts a writing phase's progress from the data offsets of verified chunks: a tensor
// is done when the data section is verified up to its end (the layout's tensors are in data
// order).
type counter struct {
	r      *reporter
	header int64
	ends   []int64
}

// verified records that the data section is verified up to offset end.
func (c *counter) verified(end int64) {
	if c.r.fn == nil {
		return
	}
	p := c.r.p
	for p.TensorsDone < len(c.ends) && c.ends[p.TensorsDone] <= end {
		p.TensorsDone++
	}
	p.BytesDone = c.header + end
	c.r.set(p, false)
}

// countingReader reports the bytes read through it as the current phase's bytes done.
type countingReader struct {
	r   io.Reader
	rep *reporter
}

func (c countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if n > 0 && c.rep.fn != nil {
		p := c.rep.p
		p.BytesDone += int64(n)
		c.rep.set(p, false)
	}
	return n, err
}
