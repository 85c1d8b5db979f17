package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/ptsafe/converter/internal/atomicfile"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
)

// convertArgs is the queue entry of a conversion: only the job id. Everything else is in the
// job table, which is the source of truth; the queue entry only says "run this".
type convertArgs struct {
	JobID string `json:"job_id"`
}

func (convertArgs) Kind() string { return kindConvert }

func unmarshalArgs(rj *rivertype.JobRow, args *convertArgs) error {
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
		s.fail(ctx, r, JobError{Type: fault.Internal, Detail: fmt.Sprintf("gave up after %d attempts", r.Attempts)}, now)
		return nil
	}
	if ok, err := markRunning(ctx, s.db, id, now); err != nil || !ok {
		return err
	}
	if r.StartedAt.IsZero() {
		s.metrics.queueWait.Observe(now.Sub(r.CreatedAt).Seconds())
	}

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.mu.Lock()
	s.running[id] = cancel
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.running, id)
		s.mu.Unlock()
	}()

	src, dst := s.blobs.input(id), s.blobs.output(id)
	s.log.Info("conversion started", slog.String("job_id", id), slog.Int("attempt", r.Attempts+1))
	m, err := s.cfg.Converter.Convert(runCtx, src, dst, convert.Options{
		Select:       r.Select,
		SourceName:   r.Filename,
		Limits:       s.cfg.Limits,
		MinFreeBytes: s.cfg.MinFreeBytes,
		Overwrite:    true, // the job's own directory: an output left by an interrupted attempt
	})
	s.metrics.readBytes.Add(float64(r.InputSize))
	if err == nil {
		err = s.succeed(ctx, r, m, now)
		if err == nil {
			return nil
		}
	}
	return s.failed(ctx, runCtx, r, err, now)
}

// succeed publishes a verified output: the manifest is written, then the job row records the
// output digest. A job canceled or deleted meanwhile gets its files removed instead.
func (s *Service) succeed(ctx context.Context, r row, m *convert.Manifest, started time.Time) error {
	if m == nil || m.Output == nil {
		return errors.New("converter returned no output description")
	}
	out := *m.Output
	m.Source.Path = r.Filename
	m.Output.Path = "output.safetensors"
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	data = append(data, '\n')
	if err := atomicfile.WriteFile(s.blobs.manifest(r.ID), data, 0o600, atomicfile.Replace); err != nil {
		return fmt.Errorf("write manifest: %w", fault.PathFree(err))
	}
	manifestSum := sha256.Sum256(data)
	ok, err := markSucceeded(ctx, s.db, r.ID, out.Size, out.SHA256, hex.EncodeToString(manifestSum[:]), time.Now())
	if err != nil {
		return err
	}
	if !ok {
		_ = os.Remove(s.blobs.output(r.ID))
		_ = os.Remove(s.blobs.manifest(r.ID))
		return nil
	}
	_ = s.blobs.removeInput(r.ID)
	s.metrics.finished.WithLabelValues(string(StateSucceeded)).Inc()
	s.metrics.run.WithLabelValues(string(StateSucceeded)).Observe(time.Since(started).Seconds())
	s.metrics.wroteByte.Add(float64(out.Size))
	s.log.Info("conversion succeeded", slog.String("job_id", r.ID), slog.Int64("output_bytes", out.Size))
	return nil
}

// failed settles an attempt that ended in err.
func (s *Service) failed(ctx, runCtx context.Context, r row, err error, started time.Time) error {
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
		s.fail(ctx, r, je, started)
		return river.JobCancel(err)
	}
	if r.Attempts+1 >= s.cfg.MaxAttempts {
		je.Detail = fmt.Sprintf("after %d attempts: %s", r.Attempts+1, je.Detail)
		s.fail(ctx, r, je, started)
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

// fail records a terminal failure of a running job.
func (s *Service) fail(ctx context.Context, r row, je JobError, started time.Time) {
	ctx = context.WithoutCancel(ctx)
	ok, err := markFinished(ctx, s.db, r.ID, StateFailed, je, time.Now(), StateQueued, StateRunning)
	if err != nil {
		s.log.Error("record job failure", slog.String("job_id", r.ID), slog.String("error", err.Error()))
		return
	}
	if !ok {
		return
	}
	_ = s.blobs.removeInput(r.ID)
	s.metrics.finished.WithLabelValues(je.Type.String()).Inc()
	s.metrics.run.WithLabelValues(je.Type.String()).Observe(time.Since(started).Seconds())
	s.log.Info("conversion failed", slog.String("job_id", r.ID), slog.String("error_type", je.Type.String()), slog.String("error", je.Detail))
}

type expireArgs struct{}

func (expireArgs) Kind() string { return kindExpire }

type expireWorker struct {
	river.WorkerDefaults[expireArgs]
	s *Service
}

func (w *expireWorker) Work(ctx context.Context, _ *river.Job[expireArgs]) error {
	return w.s.expire(ctx)
}
