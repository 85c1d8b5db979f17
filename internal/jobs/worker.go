package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
)

// convertArgs is the queue entry of a conversion: only the job id. Everything else is in the
// job table, which is the source of truth; the queue entry only says "run this".
type convertArgs struct {
	JobID string `json:"job_id"`
}

func (convertArgs) Kind() string { return kindConvert }

// unmarshalArgs decodes the arguments of a queue entry into args, a pointer to its kind's.
func unmarshalArgs(rj *rivertype.JobRow, args river.JobArgs) error {
	if err := json.Unmarshal(rj.EncodedArgs, args); err != nil {
		return fmt.Errorf("decode queue entry %d: %w", rj.ID, err)
	}
	return nil
}

type convertWorker struct {
	river.WorkerDefaults[convertArgs]
	s *Service
}

// Timeout disables River's own timeout: the converter enforces Limits.Timeout itself and fails
// with its own limit fault (the sandbox's wall clock is the backstop), which a second timer
// here could only pre-empt with a vaguer error.
func (w *convertWorker) Timeout(*river.Job[convertArgs]) time.Duration { return -1 }

func (w *convertWorker) Work(ctx context.Context, rj *river.Job[convertArgs]) error {
	return w.s.run(ctx, rj.ID, rj.Args.JobID)
}

// run is one attempt of a job. Its return value tells River what to do with the queue entry:
// nil when the job is settled (whatever its outcome), river.JobCancel when it must not be
// retried, any other error to try again later.
func (s *Service) run(ctx context.Context, riverID int64, id string) error {
	now := time.Now()
	r, err := getJob(ctx, s.db, "", id)
	if errors.Is(err, ErrNotFound) || err == nil && (r.State.Terminal() || r.riverJobID != riverID) {
		return nil // deleted, canceled, or superseded by a recovered queue entry
	}
	if err != nil {
		return err
	}
	if r.Attempts >= s.cfg.MaxAttempts {
		s.fail(ctx, r, JobError{Type: fault.Internal, Detail: fmt.Sprintf("gave up after %d attempts", r.Attempts)}, now, "")
		return nil
	}
	if ok, err := markRunning(ctx, s.db, id, now); err != nil || !ok {
		return err
	}
	if r.StartedAt.IsZero() {
		s.metrics.queueWait.Observe(now.Sub(r.CreatedAt).Seconds())
	}

	// The attempt's live view starts from the record as it now is (one query per attempt); r
	// stays the record as the attempt found it, which counts its attempts.
	cur, err := getJob(ctx, s.db, "", id)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	a := &attempt{cancel: cancel, job: cur.Job, live: true}
	s.mu.Lock()
	s.running[id] = a
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.running, id)
		s.mu.Unlock()
	}()

	release, err := s.store.fetch(runCtx, r.Job)
	if err != nil {
		return s.failed(ctx, runCtx, r, nil, err, now)
	}
	defer release()
	src := s.blobs.input(id)
	opts := s.options(r)
	opts.Progress = a.report(&s.mu)
	s.log.Info("conversion started", slog.String("job_id", id), slog.String("mode", string(r.Mode)), slog.Int("attempt", r.Attempts+1))
	var m *convert.Manifest
	if r.Mode == ModeScan {
		// A judged file is a finished scan, whatever the verdict; only a scan that could not
		// judge it fails.
		if m, err = s.cfg.Converter.Scan(runCtx, src, opts); m != nil {
			err = nil
		}
	} else {
		m, err = s.cfg.Converter.Convert(runCtx, src, s.blobs.output(id), s.store.outputOptions(opts, r.InputSize))
	}
	s.metrics.readBytes.Add(float64(r.InputSize))
	// From here the job's record says what it is.
	s.mu.Lock()
	a.live = false
	s.mu.Unlock()
	if err == nil {
		err = s.succeed(ctx, r, m, now)
		if err == nil {
			return nil
		}
	}
	return s.failed(ctx, runCtx, r, m, err, now)
}

// options are the conversion options of job r.
func (s *Service) options(r row) convert.Options {
	return convert.Options{
		Select:       r.Select,
		AllowGlobals: r.AllowGlobals,
		SourceName:   r.Filename,
		Limits:       s.cfg.Limits,
		MinFreeBytes: s.cfg.MinFreeBytes,
		Overwrite:    true, // the job's own directory: an output left by an interrupted attempt
	}
}

// writeManifest stores m as job r's manifest (its scan report), naming files as the user knows
// them, and returns its SHA-256.
func (s *Service) writeManifest(ctx context.Context, r row, m *convert.Manifest) (string, error) {
	m.Source.Path = r.Filename
	if m.Output != nil {
		m.Output.Path = "output.safetensors"
		// How the output was uploaded is no part of what it is.
		m.Output.PartSize, m.Output.PartSHA256 = 0, nil
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode manifest: %w", err)
	}
	data = append(data, '\n')
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	if err := s.store.keepManifest(ctx, r.ID, data, digest); err != nil {
		return "", fmt.Errorf("store manifest: %w", err)
	}
	return digest, nil
}

// succeed publishes a verified output, or a scan job's report: the manifest is written, then
// the job row records the output digest. A job canceled or deleted meanwhile gets its files
// removed instead.
func (s *Service) succeed(ctx context.Context, r row, m *convert.Manifest, started time.Time) error {
	if m == nil || m.Output == nil && r.Mode != ModeScan {
		return errors.New("converter returned no output description")
	}
	var out convert.Output
	if m.Output != nil {
		out = *m.Output
		if err := s.store.keepOutput(ctx, r.ID, out); err != nil {
			return fmt.Errorf("store output: %w", err)
		}
	}
	manifestSum, err := s.writeManifest(ctx, r, m)
	if err != nil {
		return err
	}
	ok, err := markSucceeded(ctx, s.db, r.ID, out.Size, out.SHA256, manifestSum, time.Now())
	if err != nil {
		return err
	}
	if !ok {
		_ = s.store.remove(ctx, r.ID, nameOutput, nameManifest)
		return nil
	}
	_ = s.store.remove(ctx, r.ID, nameInput)
	s.metrics.finished.WithLabelValues(string(StateSucceeded)).Inc()
	s.metrics.run.WithLabelValues(string(StateSucceeded)).Observe(time.Since(started).Seconds())
	s.metrics.wroteByte.Add(float64(out.Size))
	s.log.Info("conversion succeeded", slog.String("job_id", r.ID), slog.Int64("output_bytes", out.Size))
	return nil
}

// failed settles an attempt that ended in err; m is the converter's manifest of a refused file.
func (s *Service) failed(ctx, runCtx context.Context, r row, m *convert.Manifest, err error, started time.Time) error {
	now := time.Now()
	if runCtx.Err() != nil {
		cur, gerr := getJob(ctx, s.db, "", r.ID)
		switch {
		case errors.Is(context.Cause(runCtx), errCanceledByRequest), errors.Is(gerr, ErrNotFound) || gerr == nil && cur.State == StateCanceled:
			s.metrics.run.WithLabelValues(fault.Canceled.String()).Observe(now.Sub(started).Seconds())
			return river.JobCancel(err)
		default:
			// The server is stopping: put the job back without counting the attempt.
			if qerr := markQueued(context.WithoutCancel(ctx), s.db, r.ID, true, now); qerr != nil {
				s.log.Error("requeue interrupted job", slog.String("job_id", r.ID), slog.String("error", qerr.Error()))
			}
			return err
		}
	}
	je := classify(err)
	if je.Type != fault.Internal {
		s.fail(ctx, r, je, started, s.report(ctx, r, je, m))
		return river.JobCancel(err)
	}
	if r.Attempts+1 >= s.cfg.MaxAttempts {
		je.Detail = fmt.Sprintf("after %d attempts: %s", r.Attempts+1, je.Detail)
		s.fail(ctx, r, je, started, "")
		return river.JobCancel(err)
	}
	s.log.Warn("conversion failed, will retry", slog.String("job_id", r.ID), slog.String("error", je.Detail))
	s.metrics.retries.Inc()
	if qerr := markQueued(ctx, s.db, r.ID, false, now); qerr != nil {
		return errors.Join(err, qerr)
	}
	return err
}

// classify maps a converter error to the job's error. Its text names files by the names the
// user gave them (the converter is given the upload's file name), never by server paths.
func classify(err error) JobError {
	return JobError{Type: fault.KindOf(err), Detail: err.Error()}
}

// report stores m, the converter's report of a conversion job's refused file, and returns its
// digest, or "" when there is none. Files refused for a limit have none.
func (s *Service) report(ctx context.Context, r row, je JobError, m *convert.Manifest) string {
	if !reported(je.Type) || m == nil {
		return ""
	}
	sum, err := s.writeManifest(ctx, r, m)
	if err != nil {
		s.log.Warn("store report of a refused file", slog.String("job_id", r.ID), slog.String("error", err.Error()))
		return ""
	}
	return sum
}

// reported reports whether a conversion that failed with kind keeps a report of its file: a
// verdict on the file, which a scan repeats.
func reported(kind fault.Kind) bool {
	return kind == fault.Unsafe || kind == fault.Malformed || kind == fault.Unsupported
}

// fail records a terminal failure of a running job, with the digest of its stored scan report
// when reportSHA is set.
func (s *Service) fail(ctx context.Context, r row, je JobError, started time.Time, reportSHA string) {
	ctx = context.WithoutCancel(ctx)
	ok, err := markFinished(ctx, s.db, r.ID, StateFailed, je, reportSHA, time.Now(), StateQueued, StateRunning)
	if err != nil {
		s.log.Error("record job failure", slog.String("job_id", r.ID), slog.String("error", err.Error()))
		return
	}
	if !ok {
		return
	}
	_ = s.store.remove(ctx, r.ID, nameInput)
	s.metrics.finished.WithLabelValues(je.Type.String()).Inc()
	s.metrics.run.WithLabelValues(je.Type.String()).Observe(time.Since(started).Seconds())
	s.log.Info("conversion failed", slog.String("job_id", r.ID), slog.String("error_type", je.Type.String()), slog.String("error", je.Detail))
}

type expireArgs struct{}

func (expireArgs) Kind() string { return kindExpire }

func (expireArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: queueUpkeep} }

type expireWorker struct {
	river.WorkerDefaults[expireArgs]
	s *Service
}

func (w *expireWorker) Work(ctx context.Context, _ *river.Job[expireArgs]) error {
	return w.s.expire(ctx)
}

// attempt is a job's attempt running in this process: how to cancel it and, while the converter
// runs, the job as it is (live), with the converter's latest progress.
type attempt struct {
	cancel   context.CancelCauseFunc
	job      Job
	live     bool
	progress *convert.Progress
}

// report returns the converter's progress callback for a, which keeps the latest record under
// mu (the Service's).
func (a *attempt) report(mu *sync.Mutex) func(convert.Progress) {
	return func(p convert.Progress) {
		mu.Lock()
		a.progress = &p
		mu.Unlock()
	}
}

// live returns a tenant's job (any tenant's when tenant is "") while its converter runs in this
// process, with its latest progress.
func (s *Service) live(tenant, id string) (Job, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.running[id]
	if a == nil || !a.live || tenant != "" && a.job.Tenant != tenant {
		return Job{}, false
	}
	j := a.job
	if a.progress != nil {
		p := *a.progress
		j.Progress = &p
	}
	return j, true
}
