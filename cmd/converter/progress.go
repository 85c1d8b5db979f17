package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/ptsafe/converter/internal/batch"
)

// lineEvery is how often a batch without a terminal prints its progress line.
const lineEvery = 5 * time.Second

// batchProgress shows a batch's progress on stderr: a bar with files and bytes done, rate and
// ETA on a terminal (progressbar), else one line every lineEvery, so that a log stays readable.
type batchProgress struct {
	w    io.Writer
	mode string // bar, lines or none

	mu         sync.Mutex
	bar        *progressbar.ProgressBar
	files      int
	done       int
	total      int64
	bytes      int64
	started    time.Time
	stop, gone chan struct{}
}

var _ batch.Progress = (*batchProgress)(nil)

// newBatchProgress returns the display mode asks for: auto picks bar on a terminal, else lines.
func newBatchProgress(mode string, w io.Writer) (*batchProgress, error) {
	switch mode {
	case "auto":
		mode = "lines"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	case "bar", "lines", "none":
	default:
		return nil, fmt.Errorf("--progress %q: want auto, bar, lines or none", mode)
	}
	return &batchProgress{w: w, mode: mode}, nil
}

// Start is called once the tree is listed: the files and bytes ahead.
func (p *batchProgress) Start(files int, bytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.files, p.total, p.started = files, bytes, time.Now()
	switch p.mode {
	case "bar":
		p.bar = progressbar.NewOptions64(bytes,
			progressbar.OptionSetWriter(p.w),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowTotalBytes(true),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionFullWidth(),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetDescription(p.describe()),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionSetRenderBlankState(true))
	case "lines":
		p.stop, p.gone = make(chan struct{}), make(chan struct{})
		go p.lines()
	}
}

// Advance counts source bytes processed.
func (p *batchProgress) Advance(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bytes += n
	if p.bar != nil {
		p.bar.Add64(n)
	}
}

// Finish counts one file done.
func (p *batchProgress) Finish(batch.File) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	if p.bar != nil {
		p.bar.Describe(p.describe())
	}
}

func (p *batchProgress) describe() string { return fmt.Sprintf("%d/%d files", p.done, p.files) }

// lines prints a progress line every lineEvery until close.
func (p *batchProgress) lines() {
	defer close(p.gone)
	tick := time.NewTicker(lineEvery)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
			p.mu.Lock()
			fmt.Fprintln(p.w, p.line())
			p.mu.Unlock()
		}
	}
}

// line is the progress in one line: files, bytes, rate and the time left at that rate.
func (p *batchProgress) line() string {
	elapsed := time.Since(p.started)
	s := fmt.Sprintf("batch: %s, %s of %s", p.describe(), humanize.IBytes(uint64(p.bytes)), humanize.IBytes(uint64(p.total)))
	if rate := float64(p.bytes) / elapsed.Seconds(); p.bytes > 0 && elapsed > 0 {
		eta := time.Duration(float64(p.total-p.bytes) / rate * float64(time.Second))
		s += fmt.Sprintf(", %s/s, about %s left", humanize.IBytes(uint64(rate)), eta.Round(time.Second))
	}
	return s
}

// close ends the display: the bar's last state, or the line printer.
func (p *batchProgress) close() {
	p.mu.Lock()
	bar, stop := p.bar, p.stop
	p.mu.Unlock()
	if bar != nil {
		bar.Finish()
		fmt.Fprintln(p.w)
	}
	if stop != nil {
		close(stop)
		<-p.gone
	}
}
