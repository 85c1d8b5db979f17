// Package sandbox runs the parsing and conversion of an untrusted checkpoint in a child process
// of the same binary, so that a file which found a bug in the parser can at worst end its own
// child. The child gets file descriptors, not paths: the parent opens the input (refusing
// anything but a regular file), creates the output's temporary file and a private, empty
// scratch directory, and passes the descriptors. The child runs with a clean environment, no
// other descriptors but stdin, stdout and stderr, resource limits (address space following the
// conversion's limits, CPU time, open files, output file size, no core dumps), a seccomp
// filter that denies process creation, tracing and network system calls, and Landlock rules
// under which it can open no path at all but new files in its scratch directory.
//
// The parent sends the request as JSON on the child's stdin and reads the manifest or the
// classified error from its stdout (a line of JSON, then the manifest's lists as compact
// records decoded as they arrive; see answer.go), at most a bound that follows the limits,
// rebuilt so that fault.KindOf and the error text are what an in-process call would have given. It
// renames the output into place only after the child answered success. A child that crashes,
// runs out of memory or CPU time, says too much, or outlives its time becomes a *fault.Error
// (Limit for a limit, Internal for a crash), never a panic in the parent, and leaves nothing
// behind: the parent removes the temporary output and the scratch directory.
//
// The package must never run a child operation in the calling process, and never relax the
// confinement because a child failed.
package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
)

// DefaultOpenFiles is the child's RLIMIT_NOFILE when Config leaves it unset.
const DefaultOpenFiles = 64

// Config sets the confinement of each child. The zero value uses the running binary and the
// defaults.
type Config struct {
	// Exe is the converter binary started as the child; empty means os.Executable(). It must
	// dispatch ChildCommand to RunChild.
	Exe string
	// AddressSpace is the child's RLIMIT_AS in bytes; the default follows the conversion's
	// limits (see addressSpace). The Go runtime's soft memory limit is set to three quarters of
	// it.
	AddressSpace int64
	// OpenFiles is the child's RLIMIT_NOFILE (default 64).
	OpenFiles int
	// CPUTime is the child's RLIMIT_CPU (default: the wall-clock limit times the number of
	// CPUs, more than the child can use before the parent kills it; see backstops).
	CPUTime time.Duration
	// WallGrace is how long beyond Limits.Timeout, which the child enforces itself, the parent
	// waits before it kills the child (default 30s and a tenth of Limits.Timeout).
	WallGrace time.Duration
	// Logger receives the warning when a child runs with degraded confinement (no seccomp);
	// nil means slog.Default().
	Logger *slog.Logger
}

// Runner is the convert.Engine that runs conversions, scans and verifications in sandbox
// children. It warns about degraded confinement once in its lifetime. Use it by pointer; the
// zero value is ready to use.
type Runner struct {
	Config Config

	warn sync.Once
}

var _ convert.Engine = (*Runner)(nil)

// Convert converts src into dst in a sandbox child; see convert.File for the contract. The
// parent opens src, creates the temporary output beside dst and a private scratch directory,
// and hands the child the two descriptors; it renames the output into place only after the
// child answered success. On any error no file exists at dst and nothing is left behind.
func (r *Runner) Convert(ctx context.Context, src, dst string, opts convert.Options) (*convert.Manifest, error) {
	var m *convert.Manifest
	err := r.withOutput(ctx, opConvert, src, dst, opts, func(resp *response) error {
		var err error
		if m, err = resp.result(); err == nil && m.Output == nil {
			err = fault.New(fault.Internal, "", "sandbox: child reported success without an output")
		}
		return err
	})
	if err != nil {
		return m, err
	}
	m.Output.Path = dst
	return m, nil
}

// withOutput runs op (opConvert, or a test-only operation that needs the same descriptors and
// grants) in a child given src opened for reading and a pending output for dst, and commits
// the output when accept takes the child's response.
func (r *Runner) withOutput(ctx context.Context, op, src, dst string, opts convert.Options, accept func(*response) error) error {
	in, err := convert.OpenInput(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := convert.CreatePending(dst, opts)
	if err != nil {
		return err
	}
	defer out.Discard()
	if opts.ScratchDir == "" {
		opts.ScratchDir = filepath.Dir(dst) // the output's disk, as in-process
	}
	// The child knows its files by names that are no server's paths: the source's display
	// name, and the temporary output's base name.
	names := []string{opts.DisplayName(src), filepath.Base(out.Name())}
	resp, err := r.withScratch(ctx, &request{Op: op, Files: names, Options: opts}, in, out.File)
	if err != nil {
		return err
	}
	if err := accept(resp); err != nil {
		return err
	}
	if opts.Written != nil {
		opts.Written()
	}
	return out.Commit()
}

// Scan scans src in a sandbox child, which gets src's descriptor; see convert.Scan for the
// contract.
func (r *Runner) Scan(ctx context.Context, src string, opts convert.Options) (*convert.Manifest, error) {
	in, err := convert.OpenInput(src)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	resp, err := r.run(ctx, &request{Op: opScan, Files: []string{opts.DisplayName(src)}, Options: opts}, in)
	if err != nil {
		return nil, err
	}
	return resp.result()
}

// Verify checks a safetensors file, and compares it with the checkpoint source when that is
// set, in a sandbox child that gets their descriptors; see convert.Verify for the contract.
// Deflated records the comparison needs at random are inflated into a private directory that
// is removed afterwards.
func (r *Runner) Verify(ctx context.Context, path, source string, opts convert.Options) (*convert.Report, error) {
	f, err := convert.OpenInput(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	files, names := []*os.File{f}, []string{path}
	if source != "" {
		src, err := convert.OpenInput(source)
		if err != nil {
			return nil, err
		}
		defer src.Close()
		files, names = append(files, src), append(names, source)
	}
	resp, err := r.withScratch(ctx, &request{Op: opVerify, Files: names, Options: opts}, files...)
	if err != nil {
		return nil, err
	}
	if resp.Error != nil {
		return nil, resp.Error.decode()
	}
	if resp.Report == nil {
		return nil, fault.New(fault.Internal, "", "sandbox: child returned neither a report nor an error")
	}
	return resp.Report, nil
}

// withScratch runs req with a scratch directory of its own: a new, empty, private directory
// made inside req.Options.ScratchDir (the system's temporary directory when unset), the only
// path the child's Landlock rules let it create files in, and removed with whatever the child
// left there when it ends.
func (r *Runner) withScratch(ctx context.Context, req *request, files ...*os.File) (*response, error) {
	dir, err := os.MkdirTemp(req.Options.ScratchDir, ".converter-scratch-*")
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", fault.PathFree(err), "sandbox: scratch directory")
	}
	defer os.RemoveAll(dir)
	req.Options.ScratchDir = dir
	return r.run(ctx, req, files...)
}

// Probe starts a child that confines itself and does nothing else, and returns how well it was
// confined. A service calls it at startup to learn (and log) what this kernel supports.
func (r *Runner) Probe(ctx context.Context) (Status, error) {
	resp, err := r.run(ctx, &request{Op: opProbe})
	if err != nil {
		return Status{}, err
	}
	if resp.Error != nil {
		return resp.Status, resp.Error.decode()
	}
	return resp.Status, nil
}

func (resp *response) result() (*convert.Manifest, error) {
	m := resp.Manifest
	if resp.Error != nil {
		return m, resp.Error.decode()
	}
	if m == nil {
		return nil, fault.New(fault.Internal, "", "sandbox: child returned neither a manifest nor an error")
	}
	return m, nil
}

// backstops derives the parent's wall-clock limit and the child's CPU-time limit from the
// conversion's time limit, which convert enforces in the child with a limit fault of its own.
// Both are strictly larger, so that a slow file fails with the child's own error and they
// only stop a child that no longer checks its clock: the wall clock by WallGrace (30s and a
// tenth of the time limit by default), the CPU time by as much as every CPU can use in that
// wall time.
func backstops(cfg Config, lim limits.Limits) (wall, cpu time.Duration) {
	grace := cfg.WallGrace
	if grace <= 0 {
		grace = 30*time.Second + lim.Timeout/10
	}
	wall = lim.Timeout + grace
	cpu = cfg.CPUTime
	if cpu <= 0 {
		cpu = wall * time.Duration(runtime.NumCPU())
	}
	return wall, cpu
}

// maxStderr bounds the child's stderr the parent keeps: the first line of a crash report is
// what names the crash.
const maxStderr = 8 << 10

// childEnv marks a sandbox child's environment, which is otherwise empty. A process that finds
// it set is a child whose executable did not dispatch ChildCommand (a test binary without the
// hook, say) and must not start children of its own: that would recurse without end.
const childEnv = "CONVERTER_SANDBOX_CHILD=1"

// run starts one child, sends it req and the descriptors of files (its fds 3, 4, ... in
// order, named by req.Files), and returns its response, or a classified error when it gave none.
func (r *Runner) run(ctx context.Context, req *request, files ...*os.File) (*response, error) {
	cfg := r.Config
	if k, v, _ := strings.Cut(childEnv, "="); os.Getenv(k) == v {
		return nil, fault.New(fault.Internal, "", "sandbox: refusing to start a child from inside a sandbox child (does the executable dispatch %s?)", ChildCommand)
	}
	exe := cfg.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fault.Wrap(fault.Internal, "", err, "sandbox: find own executable")
		}
	}
	lim := req.Options.Limits.OrDefault()
	wall, cpu := backstops(cfg, lim)
	req.Rlimits = childLimits(cfg, lim, cpu)
	req.MemLimit = int64(req.Rlimits.AddressSpace / 4 * 3)
	req.MaxResponse = responseLimit(lim)
	if len(req.Files) != len(files) {
		return nil, fault.New(fault.Internal, "", "sandbox: %d files named for %d descriptors", len(req.Files), len(files))
	}
	var progress *progressPipe
	if fn := req.Options.Progress; fn != nil {
		var err error
		if progress, err = newProgressPipe(fn); err != nil {
			return nil, err
		}
		defer progress.close()
		files = append(files, progress.w)
		req.Progress = true
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", err, "sandbox: encode request")
	}

	runCtx, cancel := context.WithTimeout(ctx, wall)
	defer cancel()
	cmd := exec.CommandContext(runCtx, exe, ChildCommand)
	cmd.Env = []string{childEnv} // a clean environment: nothing from ours reaches the child
	cmd.Stdin = bytes.NewReader(body)
	cmd.ExtraFiles = files
	stderr := &headBuffer{max: maxStderr}
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	configure(cmd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", err, "sandbox: stdout pipe")
	}

	// The child's parent-death signal fires when the OS thread that started it exits, not the
	// process; keeping this goroutine on that thread until Wait returns stops the runtime from
	// handing the thread to a goroutine that might end it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return nil, fault.Wrap(fault.Internal, "", err, "sandbox: start child %s", exe)
	}
	progress.started()
	// Every path below waits for the child first: no progress is reported after run returns.
	defer progress.wait()
	resp, decErr := readAnswer(stdout, req.MaxResponse)
	stop := fault.KindOf(decErr) == fault.Limit
	if decErr != nil && !stop {
		// What the child still writes after a malformed answer, up to the answer's limit, is
		// read and dropped so that it can end.
		n, _ := io.Copy(io.Discard, io.LimitReader(stdout, req.MaxResponse+1))
		stop = n > req.MaxResponse
	}
	if stop {
		cancel() // a child that says too much is not heard to the end
		cmd.Wait()
		return nil, decErr
	}
	waitErr := cmd.Wait()
	if decErr == nil && waitErr == nil {
		r.checkStatus(resp.Status)
		return resp, nil
	}
	return nil, classify(ctx, runCtx, cmd.ProcessState, stderr.String(), req.Rlimits, wall, errors.Join(decErr, waitErr))
}

// responseLimit bounds the answer a child may give for one conversion's limits. The answer is
// mostly the manifest, whose largest part is the tensor list: each tensor's entry repeats what
// the safetensors header holds for it (name, dtype, shape and offsets; all of them together at
// most MaxHeaderBytes, also in a scan, whose plan lays the header out) and adds its SHA-256 in
// hex, byte count, storage key and field names, about 200 bytes, while a header entry takes at
// least 50: five times the header covers the list. The rest (the globals torch memoizes once,
// the capped dropped list, an error message) is small, and answerSlack covers it.
func responseLimit(lim limits.Limits) int64 {
	const answerSlack = 16 << 20
	if lim.MaxHeaderBytes > (1<<62-answerSlack)/5 {
		return 1 << 62 // a header limit beyond any memory: the child's address space is the bound
	}
	return 5*lim.MaxHeaderBytes + answerSlack
}

// addressSpace is the child's RLIMIT_AS for a conversion's limits: room for the runtime, for
// the largest pickle the limits admit as the parser holds it, for the most objects it may
// build and for the most paths the object-graph walk may visit. Each term was measured as the
// smallest RLIMIT_AS (128 MiB steps) under which converter scan --sandbox=false ends as it
// does unconfined, with GOMEMLIMIT at three quarters of it as in the child (prlimit --as):
//   - the smallest checkpoint needs 808 MiB: the runtime's reservations, thread stacks and the
//     streaming buffers; base is 1 GiB;
//   - a data.pkl that is a list of one string needs 1,848 MiB above that at 256 MB, 2,744 MiB
//     at 512 MiB (7.6 and 5.4 bytes per pickle byte): the stream's copy (about its size, see
//     the pre-scanner), gopickle's read of the string (twice its size) and the heap's growth
//     around them; perPickleByte is 8;
//   - a pickle's objects cost per object, not per byte: 3M empty dicts (a 3 MB data.pkl, the
//     costliest value: a Go map each) need 2,776 MiB, 688 bytes a dict; 10M None leaves
//     3,616 MiB, 294 bytes each, their entry in the walk's list of dropped leaves included;
//     perObject is 704;
//   - a walk's path costs even when it reaches a shared object: a list of 3,000 references to
//     one list of 3,000 None (9M paths, 6,000 objects) needs 2,864 MiB, 228 bytes a path
//     (its dropped-leaf entry); perWalkNode is 256.
//
// Each limit reached alone fits with the others' terms to spare. With the default limits that
// is 12.6 GiB of address space, a ceiling rather than a reservation; lower the limits (or set
// Config.AddressSpace) to lower it.
func addressSpace(lim limits.Limits) int64 {
	const (
		base          = 1 << 30
		perPickleByte = 8
		perObject     = 704
		perWalkNode   = 256
		most          = 1 << 62
	)
	as := int64(base)
	for _, term := range [][2]int64{
		{lim.MaxPickleBytes, perPickleByte},
		{int64(lim.MaxObjects), perObject},
		{int64(lim.MaxWalkNodes), perWalkNode},
	} {
		if term[0] > (most-as)/term[1] {
			return most
		}
		as += term[0] * term[1]
	}
	return as
}

// childLimits turns the configuration, the conversion's limits and the CPU-time backstop into
// the child's rlimits.
func childLimits(cfg Config, lim limits.Limits, cpu time.Duration) rlimits {
	as := cfg.AddressSpace
	if as <= 0 {
		as = addressSpace(lim)
	}
	nofile := cfg.OpenFiles
	if nofile <= 0 {
		nofile = DefaultOpenFiles
	}
	// The output is an 8-byte length, the header and the tensor bytes; a margin covers the
	// header's padding.
	const margin = 1 << 20
	fsize := uint64(lim.MaxOutputBytes)
	for _, add := range []uint64{uint64(lim.MaxHeaderBytes), 8, margin} {
		if fsize+add < fsize {
			fsize = ^uint64(0) >> 1 // saturate: effectively unlimited
			break
		}
		fsize += add
	}
	return rlimits{
		AddressSpace: uint64(as),
		CPUSeconds:   uint64((cpu + time.Second - 1) / time.Second),
		OpenFiles:    uint64(nofile),
		FileSize:     fsize,
	}
}

// checkStatus logs, once per Runner, a child that ran with degraded confinement.
func (r *Runner) checkStatus(st Status) {
	why, degraded := st.Degraded()
	if !degraded {
		return
	}
	r.warn.Do(func() {
		log := r.Config.Logger
		if log == nil {
			log = slog.Default()
		}
		log.Warn("sandbox confinement degraded: untrusted input is parsed with less isolation than designed", "reason", why)
	})
}

// classify names the failure of a child that gave no response.
func classify(ctx, runCtx context.Context, ps *os.ProcessState, stderr string, lim rlimits, wall time.Duration, cause error) error {
	if err := ctx.Err(); err != nil {
		return fault.Wrap(fault.Canceled, "", err, "sandbox child stopped")
	}
	if runCtx.Err() != nil {
		return fault.New(fault.Limit, "", "wall-clock limit (%s) exceeded: sandbox child killed", wall)
	}
	if ps == nil {
		return fault.Wrap(fault.Internal, "", cause, "sandbox child did not run")
	}
	if err := signalFault(ps, lim, firstLine(stderr)); err != nil {
		return err
	}
	first := firstLine(stderr)
	if isOutOfMemory(stderr) {
		return fault.New(fault.Limit, "", "address-space limit (RLIMIT_AS %d bytes) exceeded: %s", lim.AddressSpace, first)
	}
	if first != "" {
		return fault.New(fault.Internal, "", "sandbox child crashed (exit status %d): %s", ps.ExitCode(), first)
	}
	return fault.Wrap(fault.Internal, "", cause, "sandbox child exited with status %d without a result", ps.ExitCode())
}

// isOutOfMemory recognises the Go runtime's reports of a failed allocation or thread start
// (in cgo builds each pthread stack takes 8 MiB of address space), which under RLIMIT_AS is the
// address-space limit at work.
func isOutOfMemory(stderr string) bool {
	for _, s := range []string{"out of memory", "cannot allocate memory", "failed to create new OS thread", "pthread_create failed"} {
		if strings.Contains(stderr, s) {
			return true
		}
	}
	return false
}

// firstLine returns the first non-empty line of s, shortened.
func firstLine(s string) string {
	for line := range strings.Lines(s) {
		if line = strings.TrimSpace(line); line != "" {
			if len(line) > 200 {
				line = line[:200] + "..."
			}
			return line
		}
	}
	return ""
}

// headBuffer keeps the first max bytes written to it.
type headBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (h *headBuffer) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if room := h.max - h.buf.Len(); room > 0 {
		h.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (h *headBuffer) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.buf.String()
}

// maxProgressLine bounds one progress record from a child; a longer line ends the reports.
const maxProgressLine = 1 << 10

// progressPipe carries a child's progress records (lines of JSON) to a callback: the child
// writes to w, its fd after the files; a goroutine of the parent reads them from r. The parent
// keeps reading to the end whatever the child writes, so that a child never blocks on it.
type progressPipe struct {
	r, w *os.File
	fn   func(convert.Progress)
	done chan struct{}
}

func newProgressPipe(fn func(convert.Progress)) (*progressPipe, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", err, "sandbox: progress pipe")
	}
	return &progressPipe{r: r, w: w, fn: fn}, nil
}

// started closes the parent's copy of the write end, so that the reader ends when the child
// does, and starts reading. Nil does nothing.
func (p *progressPipe) started() {
	if p == nil {
		return
	}
	p.w.Close()
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(p.r)
		sc.Buffer(make([]byte, 0, maxProgressLine), maxProgressLine)
		for sc.Scan() {
			var pr convert.Progress
			if json.Unmarshal(sc.Bytes(), &pr) == nil {
				p.fn(pr)
			}
		}
		_, _ = io.Copy(io.Discard, p.r)
	}()
}

// wait returns once every record of an exited child was passed on. Nil does nothing.
func (p *progressPipe) wait() {
	if p != nil && p.done != nil {
		<-p.done
	}
}

func (p *progressPipe) close() {
	p.w.Close()
	p.r.Close()
}
