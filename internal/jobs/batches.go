package jobs

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/store"
)

// A batch is the service's `converter batch`: one queue entry plans it (batch.Plan: list
// SOURCE, read receipts, find sharded sets) and inserts one queue entry per unit of work
// (batch.Unit: a checkpoint, a sharded set, or plain files to copy), so that every node of a
// shared database works its units. Each unit's outcome is recorded with its files in one
// transaction that also counts it on the batch's row; the transaction that counts the last
// unit also settles the batch's state. Per-file outcomes are rows, read a page at a time.

// BatchOptions are the options of a batch: the part of `converter batch`'s flags a server
// takes. Removing sources is not one (see batch.ErrRemoveSource).
type BatchOptions struct {
	Include      []string `json:"include,omitempty"`
	Exclude      []string `json:"exclude,omitempty"`
	DryRun       bool     `json:"dry_run,omitempty"`
	Force        bool     `json:"force,omitempty"`
	AllowGlobals []string `json:"allow_globals,omitempty"`
}

// Batch is one server-side batch conversion of a tree and its outcome so far.
type Batch struct {
	ID     string
	Tenant string
	State  State
	// Source and Destination are local directories or s3:// prefixes.
	Source, Destination string
	Options             BatchOptions
	// Units is how many units planning made (0 until it did); UnitsDone how many finished.
	Units, UnitsDone int
	// Summary counts the outcomes of the files recorded so far.
	Summary batch.Summary
	// ExitCode is what `converter batch` would exit with for the files recorded so far.
	ExitCode int
	// Error is why the batch failed or was canceled: a file refused or failed (the worst
	// kind), or the batch itself.
	Error      *JobError
	CreatedAt  time.Time
	UpdatedAt  time.Time
	StartedAt  time.Time
	FinishedAt time.Time
	ExpiresAt  time.Time
}

const (
	kindBatchPlan = "batch_plan"
	kindBatchUnit = "batch_unit"
)

type batchPlanArgs struct {
	BatchID string `json:"batch_id"`
}

func (batchPlanArgs) Kind() string { return kindBatchPlan }

// batchAttempts bounds the attempts of a batch's planning or unit entry. Only an interrupted
// attempt (a node stopping) or a database error is tried again, so the bound is generous: the
// last attempt settles what it could not do as an internal failure, lest the batch wait for
// an entry River has discarded.
const batchAttempts = 25

func (batchPlanArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: batchAttempts}
}

type batchUnitArgs struct {
	BatchID string `json:"batch_id"`
	Seq     int    `json:"seq"`
}

func (batchUnitArgs) Kind() string { return kindBatchUnit }

func (batchUnitArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: batchAttempts}
}

// BatchParams describe a new batch. Local paths must be absolute and already checked against
// what the operator allows; AllowGlobals against the server's list.
type BatchParams struct {
	Tenant, Source, Destination string
	Options                     BatchOptions
}

// SubmitBatch records a batch and queues its planning durably, and returns it.
func (s *Service) SubmitBatch(ctx context.Context, p BatchParams) (Batch, error) {
	if s.stopping.Load() {
		return Batch{}, ErrStopping
	}
	uid, err := uuid.NewV7()
	if err != nil {
		return Batch{}, fmt.Errorf("new batch id: %w", err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	b := Batch{ID: uid.String(), Tenant: p.Tenant, State: StateQueued, Source: p.Source,
		Destination: p.Destination, Options: p.Options, CreatedAt: now, UpdatedAt: now}
	opts, err := json.Marshal(p.Options)
	if err != nil {
		return Batch{}, fmt.Errorf("encode batch options: %w", err)
	}
	tx, err := s.db.begin(ctx)
	if err != nil {
		return Batch{}, fmt.Errorf("submit batch: %w", err)
	}
	defer tx.rollback()
	riverID, err := tx.enqueue(ctx, batchPlanArgs{BatchID: b.ID})
	if err != nil {
		return Batch{}, fmt.Errorf("queue batch %s: %w", b.ID, err)
	}
	if _, err := tx.exec(ctx, `INSERT INTO converter_batch (id, tenant, state, source, destination,
		options, river_job_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		b.ID, b.Tenant, string(b.State), b.Source, b.Destination, string(opts), riverID,
		millis(now), millis(now)); err != nil {
		return Batch{}, noSpace(fmt.Errorf("insert batch %s: %w", b.ID, err))
	}
	if err := tx.commit(); err != nil {
		return Batch{}, noSpace(fmt.Errorf("submit batch %s: %w", b.ID, err))
	}
	return b, nil
}

// GetBatch returns a tenant's batch, or ErrNotFound (also for another tenant's).
func (s *Service) GetBatch(ctx context.Context, tenant, id string) (Batch, error) {
	r, err := getBatch(ctx, s.db, tenant, id)
	return s.batchExpiry(r.Batch), err
}

func (s *Service) batchExpiry(b Batch) Batch {
	if !b.FinishedAt.IsZero() {
		b.ExpiresAt = b.FinishedAt.Add(s.cfg.Retention)
	}
	return b
}

// BatchFiles returns a page of the outcomes of a tenant's batch, in lexical order of path,
// after the path after ("" for the first page), and whether more follow.
func (s *Service) BatchFiles(ctx context.Context, tenant, id, after string, pageSize int) ([]batch.File, bool, error) {
	if _, err := getBatch(ctx, s.db, tenant, id); err != nil {
		return nil, false, err
	}
	rows, err := s.db.query(ctx, `SELECT file FROM converter_batch_file WHERE batch_id = ? AND path > ?
		ORDER BY path LIMIT ?`, id, after, pageSize+1)
	if err != nil {
		return nil, false, fmt.Errorf("list files of batch %s: %w", id, err)
	}
	defer rows.Close()
	files := []batch.File{}
	for rows.Next() {
		var doc string
		if err := rows.Scan(&doc); err != nil {
			return nil, false, fmt.Errorf("list files of batch %s: %w", id, err)
		}
		var f batch.File
		if err := json.Unmarshal([]byte(doc), &f); err != nil {
			return nil, false, fmt.Errorf("file of batch %s: %w", id, err)
		}
		files = append(files, f)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list files of batch %s: %w", id, err)
	}
	more := len(files) > pageSize
	if more {
		files = files[:pageSize]
	}
	return files, more, nil
}

// ListBatches returns a page of the tenant's batches, newest first, and whether more follow.
func (s *Service) ListBatches(ctx context.Context, p ListParams) ([]Batch, bool, error) {
	where, args := []string{"tenant = ?"}, []any{p.Tenant}
	if p.State != "" {
		where, args = append(where, "state = ?"), append(args, string(p.State))
	}
	if p.After != "" {
		where, args = append(where, "id < ?"), append(args, p.After)
	}
	rows, err := s.db.query(ctx, `SELECT `+batchColumns+` FROM converter_batch WHERE `+
		strings.Join(where, " AND ")+` ORDER BY id DESC LIMIT ?`, append(args, p.PageSize+1)...)
	if err != nil {
		return nil, false, fmt.Errorf("list batches: %w", err)
	}
	defer rows.Close()
	var out []Batch
	for rows.Next() {
		r, err := scanBatch(rows)
		if err != nil {
			return nil, false, fmt.Errorf("list batches: %w", err)
		}
		out = append(out, s.batchExpiry(r.Batch))
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list batches: %w", err)
	}
	more := len(out) > p.PageSize
	if more {
		out = out[:p.PageSize]
	}
	return out, more, nil
}

// CancelBatch cancels a queued or running batch: its queued units never run, its running
// ones are canceled, and no outcome is recorded after this. Canceling a canceled batch
// returns it unchanged; a succeeded or failed one is ErrConflict.
func (s *Service) CancelBatch(ctx context.Context, tenant, id string) (Batch, error) {
	tx, err := s.db.begin(ctx)
	if err != nil {
		return Batch{}, fmt.Errorf("cancel batch: %w", err)
	}
	defer tx.rollback()
	r, err := getBatch(ctx, tx, tenant, id)
	if err != nil {
		return Batch{}, err
	}
	switch r.State {
	case StateCanceled:
		return s.batchExpiry(r.Batch), nil
	case StateSucceeded, StateFailed:
		return s.batchExpiry(r.Batch), ErrConflict
	}
	now := millis(time.Now())
	// The state is checked again as the row is written: a node may have settled the batch
	// since it was read.
	n, err := tx.exec(ctx, `UPDATE converter_batch SET state = 'canceled', error_type = ?,
		error_detail = 'canceled by request', updated_at = ?, finished_at = ? WHERE id = ? AND state IN (?, ?)`,
		fault.Canceled.String(), now, now, id, string(StateQueued), string(StateRunning))
	if err != nil {
		return Batch{}, fmt.Errorf("cancel batch %s: %w", id, err)
	}
	if n == 0 {
		b, err := s.GetBatch(ctx, tenant, id)
		if err == nil && b.State != StateCanceled {
			err = ErrConflict
		}
		return b, err
	}
	if err := s.cancelBatchEntries(ctx, tx, r); err != nil {
		return Batch{}, err
	}
	if err := tx.commit(); err != nil {
		return Batch{}, fmt.Errorf("cancel batch %s: %w", id, err)
	}
	s.stopBatch(id)
	s.finishedBatch(id, StateCanceled)
	return s.GetBatch(ctx, tenant, id)
}

// cancelBatchEntries cancels the queue entries of a batch's planning and of its unfinished
// units: River stops those running on any node.
func (s *Service) cancelBatchEntries(ctx context.Context, tx dbTx, r batchRow) error {
	if err := cancelRiverJob(ctx, tx, r.riverJobID); err != nil {
		return err
	}
	rows, err := tx.query(ctx, `SELECT river_job_id FROM converter_batch_unit WHERE batch_id = ? AND done = 0
		AND river_job_id IS NOT NULL`, r.ID)
	if err != nil {
		return fmt.Errorf("units of batch %s: %w", r.ID, err)
	}
	var ids []int64 // read them all first: SQLite's one connection runs one statement at a time
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return fmt.Errorf("units of batch %s: %w", r.ID, err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("units of batch %s: %w", r.ID, err)
	}
	for _, id := range ids {
		if err := cancelRiverJob(ctx, tx, id); err != nil {
			return err
		}
	}
	return nil
}

// DeleteBatch removes a tenant's batch and its outcomes, canceling it first if it has not
// finished. What it wrote to its destination stays.
func (s *Service) DeleteBatch(ctx context.Context, tenant, id string) error {
	tx, err := s.db.begin(ctx)
	if err != nil {
		return fmt.Errorf("delete batch: %w", err)
	}
	defer tx.rollback()
	r, err := getBatch(ctx, tx, tenant, id)
	if err != nil {
		return err
	}
	if !r.State.Terminal() {
		if err := s.cancelBatchEntries(ctx, tx, r); err != nil {
			return err
		}
	}
	if err := deleteBatch(ctx, tx, id); err != nil {
		return err
	}
	if err := tx.commit(); err != nil {
		return fmt.Errorf("delete batch %s: %w", id, err)
	}
	s.stopBatch(id)
	if !r.State.Terminal() {
		s.finishedBatch(id, StateCanceled)
	}
	return nil
}

func deleteBatch(ctx context.Context, q querier, id string) error {
	for _, table := range []string{"converter_batch_file", "converter_batch_unit"} {
		if _, err := q.exec(ctx, `DELETE FROM `+table+` WHERE batch_id = ?`, id); err != nil {
			return fmt.Errorf("delete batch %s: %w", id, err)
		}
	}
	if _, err := q.exec(ctx, `DELETE FROM converter_batch WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete batch %s: %w", id, err)
	}
	return nil
}

// expireBatches removes batches finished before horizon, with their outcomes.
func (s *Service) expireBatches(ctx context.Context, horizon time.Time) error {
	for {
		ids, err := expired(ctx, s.db, "converter_batch", horizon, 500)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if err := deleteBatch(ctx, s.db, id); err != nil {
				return err
			}
		}
		if len(ids) < 500 {
			return nil
		}
	}
}

// stopBatch cancels the batch's units running in this process.
func (s *Service) stopBatch(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cancel := range s.batchUnits[id] {
		cancel(errCanceledByRequest)
	}
}

// batchOptions are the batch package's options for b: the service's limits and scratch
// space, and at most the service's workers at once in one unit.
func (s *Service) batchOptions(b Batch) batch.Options {
	return batch.Options{
		// A unit is one entry of the queue that runs Config.Workers entries at once: one
		// conversion at a time in each keeps the node's conversions within Workers.
		Workers: 1, DryRun: b.Options.DryRun, Force: b.Options.Force,
		Include: b.Options.Include, Exclude: b.Options.Exclude,
		Convert: convert.Options{AllowGlobals: b.Options.AllowGlobals, Limits: s.cfg.Limits,
			MinFreeBytes: s.cfg.MinFreeBytes},
		ScratchDir: s.blobs.tmpDir(),
	}
}

// batchTrees opens a batch's source and destination.
func (s *Service) batchTrees(ctx context.Context, b Batch) (src, dst store.Tree, err error) {
	if src, err = s.openTree(ctx, b.Source); err != nil {
		return nil, nil, err
	}
	if dst, err = s.openTree(ctx, b.Destination); err != nil {
		return nil, nil, err
	}
	return src, dst, nil
}

// openTree opens an s3:// prefix with the service's S3 settings, or a local directory.
func (s *Service) openTree(ctx context.Context, loc string) (store.Tree, error) {
	if strings.HasPrefix(loc, "s3://") {
		return s3store.New(ctx, loc, s.cfg.StoreConfig)
	}
	if !filepath.IsAbs(loc) {
		return nil, fmt.Errorf("%s is not an absolute path", loc)
	}
	t, err := store.NewLocal(loc)
	if err != nil {
		return nil, fault.PathFree(err)
	}
	return t, nil
}

// requeueBatchEntry replaces a batch's planning or unit entry that a dead process left running
// with a fresh one, in one transaction with the batch's record of it.
func (s *Service) requeueBatchEntry(ctx context.Context, rj *rivertype.JobRow) error {
	tx, err := s.db.begin(ctx)
	if err != nil {
		return fmt.Errorf("recover batch entry: %w", err)
	}
	defer tx.rollback()
	if err := tx.cancelEntry(ctx, rj.ID); err != nil {
		return fmt.Errorf("recover batch entry: %w", err)
	}
	var args interface {
		river.JobArgs
		record(ctx context.Context, q querier, riverID int64) error
	} = &batchPlanArgs{}
	if rj.Kind == kindBatchUnit {
		args = &batchUnitArgs{}
	}
	if err := unmarshalArgs(rj, args); err != nil {
		return err
	}
	riverID, err := tx.enqueue(ctx, args)
	if err != nil {
		return fmt.Errorf("requeue batch entry %d: %w", rj.ID, err)
	}
	if err := args.record(ctx, tx, riverID); err != nil {
		return err
	}
	if err := tx.commit(); err != nil {
		return fmt.Errorf("recover batch entry %d: %w", rj.ID, err)
	}
	s.metrics.recovered.Inc()
	s.log.Info("recovered interrupted batch entry", slog.String("kind", rj.Kind), slog.Int64("entry", rj.ID))
	return nil
}

// record makes riverID the batch's planning entry.
func (a *batchPlanArgs) record(ctx context.Context, q querier, riverID int64) error {
	if _, err := q.exec(ctx, `UPDATE converter_batch SET river_job_id = ? WHERE id = ?`, riverID, a.BatchID); err != nil {
		return fmt.Errorf("record planning entry of batch %s: %w", a.BatchID, err)
	}
	return nil
}

// record makes riverID the unit's entry.
func (a *batchUnitArgs) record(ctx context.Context, q querier, riverID int64) error {
	if _, err := q.exec(ctx, `UPDATE converter_batch_unit SET river_job_id = ? WHERE batch_id = ? AND seq = ?`,
		riverID, a.BatchID, a.Seq); err != nil {
		return fmt.Errorf("record entry of unit %d of batch %s: %w", a.Seq, a.BatchID, err)
	}
	return nil
}

// untimed is a queue worker without River's timeout: listing a large store takes as long as
// it takes, and the converter enforces its own time limit on each file of a unit.
type untimed[T river.JobArgs] struct {
	river.WorkerDefaults[T]
	work func(ctx context.Context, rj *river.Job[T]) error
}

func (w *untimed[T]) Timeout(*river.Job[T]) time.Duration { return -1 }

func (w *untimed[T]) Work(ctx context.Context, rj *river.Job[T]) error { return w.work(ctx, rj) }

// gaveUp reports whether err ends the last attempt of a batch's entry: River will not try
// again, so the batch must record the failure itself. A cancel by request is no failure.
func gaveUp(rj *rivertype.JobRow, err error) bool {
	var canceled *river.JobCancelError
	return err != nil && !errors.As(err, &canceled) && rj.Attempt >= rj.MaxAttempts
}

// addBatchWorkers registers the workers of batches' planning and units.
func (s *Service) addBatchWorkers(workers *river.Workers) error {
	plan := &untimed[batchPlanArgs]{work: func(ctx context.Context, rj *river.Job[batchPlanArgs]) error {
		err := s.planBatch(ctx, rj.ID, rj.Args.BatchID)
		if gaveUp(rj.JobRow, err) {
			return s.failBatch(ctx, rj.Args.BatchID, JobError{Type: fault.Internal,
				Detail: fmt.Sprintf("planning gave up after %d attempts: %v", rj.Attempt, err)})
		}
		return err
	}}
	unit := &untimed[batchUnitArgs]{work: func(ctx context.Context, rj *river.Job[batchUnitArgs]) error {
		err := s.runBatchUnit(ctx, rj.Args.BatchID, rj.Args.Seq)
		if gaveUp(rj.JobRow, err) {
			return s.recordUnit(ctx, rj.Args.BatchID, rj.Args.Seq, &batch.Report{}, &JobError{Type: fault.Internal,
				Detail: fmt.Sprintf("unit %d gave up after %d attempts: %v", rj.Args.Seq, rj.Attempt, err)})
		}
		return err
	}}
	if err := river.AddWorkerSafely(workers, plan); err != nil {
		return fmt.Errorf("register batch planning worker: %w", err)
	}
	if err := river.AddWorkerSafely(workers, unit); err != nil {
		return fmt.Errorf("register batch unit worker: %w", err)
	}
	return nil
}

// planBatch plans a queued batch and queues its units, in one transaction with the outcomes
// planning decided. A batch already planned (a second delivery of the entry), canceled or
// deleted is left alone.
func (s *Service) planBatch(ctx context.Context, riverID int64, id string) error {
	r, err := getBatch(ctx, s.db, "", id)
	if errors.Is(err, ErrNotFound) || err == nil && (r.State.Terminal() || r.riverJobID != riverID || r.planned) {
		return nil
	}
	if err != nil {
		return err
	}
	now := millis(time.Now())
	if _, err := s.db.exec(ctx, `UPDATE converter_batch SET state = 'running', started_at = coalesce(started_at, ?),
		updated_at = ? WHERE id = ? AND state IN ('queued', 'running')`, now, now, id); err != nil {
		return fmt.Errorf("start batch %s: %w", id, err)
	}
	src, dst, err := s.batchTrees(ctx, r.Batch)
	var p *batch.Planned
	if err == nil {
		p, err = batch.Plan(ctx, boundedTree{src, s.cfg.MaxBatchFiles}, dst, s.cfg.Converter, s.batchOptions(r.Batch))
	}
	if err != nil {
		if ctx.Err() != nil {
			return err // the node is stopping: plan again later
		}
		return s.failBatch(ctx, id, JobError{Type: fault.KindOf(err), Detail: err.Error()})
	}
	return s.recordPlan(ctx, id, p)
}

// boundedTree is a batch's SOURCE whose listing fails as over a limit at its max+1st entry:
// planning keeps every entry in memory and records what it decided in one transaction, and a
// bucket of millions of objects is refused without listing it all. Every entry counts, the
// ones planning ignores included: each is held and reported.
type boundedTree struct {
	store.Tree
	max int
}

func (t boundedTree) Walk(ctx context.Context, fn func(store.Object, error) error) error {
	n := 0
	return t.Tree.Walk(ctx, func(o store.Object, err error) error {
		if n++; n > t.max {
			return fault.New(fault.Limit, "", "SOURCE holds more than %d files (the listing stopped at %s): "+
				"raise --max-batch-files on the nodes, or convert its subtrees in separate batches", t.max, o.Path)
		}
		return fn(o, err)
	})
}

// recordPlan records what planning decided and queues the units.
func (s *Service) recordPlan(ctx context.Context, id string, p *batch.Planned) error {
	tx, err := s.db.begin(ctx)
	if err != nil {
		return fmt.Errorf("record plan of batch %s: %w", id, err)
	}
	defer tx.rollback()
	sum := p.Report.Summary
	n, err := tx.exec(ctx, `UPDATE converter_batch SET units_total = ?, converted = ?, skipped = ?, refused = ?,
		failed = ?, copied = ?, ignored = ?, exit_code = ?, worst_kind = ?, updated_at = ?
		WHERE id = ? AND state = 'running' AND units_total IS NULL`,
		len(p.Units), sum.Converted, sum.Skipped, sum.Refused, sum.Failed, sum.Copied, sum.Ignored,
		p.Report.ExitCode(), worstKind(p.Report), millis(time.Now()), id)
	if err != nil || n == 0 {
		return err // canceled, deleted or planned meanwhile
	}
	if err := insertBatchFiles(ctx, tx, id, p.Report.Files); err != nil {
		return err
	}
	first := 0
	for units := range slices.Chunk(p.Units, rowsPerInsert) {
		if err := insertUnits(ctx, tx, id, first, units); err != nil {
			return err
		}
		first += len(units)
	}
	state := StateRunning
	if len(p.Units) == 0 {
		if state, err = settleBatch(ctx, tx, id); err != nil {
			return err
		}
	}
	if err := tx.commit(); err != nil {
		return fmt.Errorf("record plan of batch %s: %w", id, err)
	}
	s.finishedBatch(id, state)
	s.log.Info("batch planned", slog.String("batch_id", id), slog.Int("units", len(p.Units)))
	return nil
}

// rowsPerInsert is how many rows one statement of recordPlan or recordUnit inserts (queue
// entries included). Statements of a row each made the transaction of a plan of 100,000
// checkpoints (as many units) take 54 s on SQLite, holding the server's one connection all
// along, and 34 s on PostgreSQL; 500 rows a statement, 11 s and 8 s
// (bench/results/2026-11-30-batch-planning.txt). At 4 parameters a row they stay far below either
// database's limit on parameters.
const rowsPerInsert = 500

// insertUnits queues units, the first numbered first, and inserts their rows.
func insertUnits(ctx context.Context, tx dbTx, id string, first int, units []batch.Unit) error {
	args := make([]river.JobArgs, len(units))
	for i := range units {
		args[i] = batchUnitArgs{BatchID: id, Seq: first + i}
	}
	entries, err := tx.enqueueMany(ctx, args)
	if err != nil {
		return fmt.Errorf("queue units of batch %s: %w", id, err)
	}
	riverIDs := make([]int64, len(units))
	for _, e := range entries {
		var a batchUnitArgs
		if err := json.Unmarshal(e.EncodedArgs, &a); err != nil || a.Seq < first || a.Seq >= first+len(units) {
			return fmt.Errorf("queue units of batch %s: entry %d is none of them (%v)", id, e.ID, err)
		}
		riverIDs[a.Seq-first] = e.ID
	}
	values := make([]any, 0, 4*len(units))
	for i, u := range units {
		doc, err := json.Marshal(u)
		if err != nil {
			return fmt.Errorf("encode unit of batch %s: %w", id, err)
		}
		values = append(values, id, first+i, string(doc), riverIDs[i])
	}
	if _, err := tx.exec(ctx, `INSERT INTO converter_batch_unit (batch_id, seq, unit, river_job_id) VALUES `+
		rowPlaceholders(len(units), 4), values...); err != nil {
		return fmt.Errorf("insert units of batch %s: %w", id, err)
	}
	return nil
}

// rowPlaceholders is the VALUES list of n rows of cols parameters each: "(?, ?), (?, ?)".
func rowPlaceholders(n, cols int) string {
	row := "(" + strings.TrimSuffix(strings.Repeat("?, ", cols), ", ") + ")"
	return strings.TrimSuffix(strings.Repeat(row+", ", n), ", ")
}

// runBatchUnit works one unit of a batch and records its outcome, unless the batch was
// canceled or deleted, or the unit already done (a second delivery of its entry).
func (s *Service) runBatchUnit(ctx context.Context, id string, seq int) error {
	// The unit can be stopped before its batch's state is read: a cancel that commits between
	// the two then still reaches it.
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.mu.Lock()
	if s.batchUnits[id] == nil {
		s.batchUnits[id] = map[int]context.CancelCauseFunc{}
	}
	s.batchUnits[id][seq] = cancel
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.batchUnits[id], seq)
		if len(s.batchUnits[id]) == 0 {
			delete(s.batchUnits, id)
		}
		s.mu.Unlock()
	}()
	r, err := getBatch(ctx, s.db, "", id)
	if errors.Is(err, ErrNotFound) || err == nil && r.State.Terminal() {
		return nil
	}
	if err != nil {
		return err
	}
	var doc string
	var done int
	err = s.db.queryRow(ctx, `SELECT unit, done FROM converter_batch_unit WHERE batch_id = ? AND seq = ?`, id, seq).Scan(&doc, &done)
	if err != nil || done != 0 {
		return err
	}
	var u batch.Unit
	if err := json.Unmarshal([]byte(doc), &u); err != nil {
		return fmt.Errorf("unit %d of batch %s: %w", seq, id, err)
	}

	src, dst, err := s.batchTrees(runCtx, r.Batch)
	var rep *batch.Report
	if err == nil {
		rep, err = batch.RunUnit(runCtx, src, dst, s.cfg.Converter, s.batchOptions(r.Batch), u)
	}
	if runCtx.Err() != nil {
		if errors.Is(context.Cause(runCtx), errCanceledByRequest) {
			return river.JobCancel(err)
		}
		return err // the node is stopping: the unit runs again later
	}
	var unitErr *JobError
	if err != nil {
		unitErr = &JobError{Type: fault.KindOf(err), Detail: fmt.Sprintf("unit %d: %v", seq, err)}
	}
	if rep == nil {
		rep = &batch.Report{}
	}
	return s.recordUnit(ctx, id, seq, rep, unitErr)
}

// recordUnit records a unit's outcomes and counts it on its batch, settling the batch when it
// was the last, all in one transaction: whichever node counts the last unit settles it, and
// the row lock the count takes orders nodes finishing units together.
func (s *Service) recordUnit(ctx context.Context, id string, seq int, rep *batch.Report, unitErr *JobError) error {
	ctx = context.WithoutCancel(ctx)
	tx, err := s.db.begin(ctx)
	if err != nil {
		return fmt.Errorf("record unit of batch %s: %w", id, err)
	}
	defer tx.rollback()
	n, err := tx.exec(ctx, `UPDATE converter_batch_unit SET done = 1, node = ? WHERE batch_id = ? AND seq = ? AND done = 0`,
		nullString(s.node), id, seq)
	if err != nil || n == 0 {
		return err
	}
	sum := rep.Summary
	code, kind := rep.ExitCode(), worstKind(rep)
	var errType, errDetail any
	if unitErr != nil {
		if code == 0 {
			code, kind = fault.Internal.ExitCode(), fault.Internal.String()
		}
		errType, errDetail = unitErr.Type.String(), unitErr.Detail
	}
	var doneUnits, total int
	err = tx.queryRow(ctx, `UPDATE converter_batch SET units_done = units_done + 1, converted = converted + ?,
		skipped = skipped + ?, refused = refused + ?, failed = failed + ?, copied = copied + ?,
		ignored = ignored + ?, bytes_in = bytes_in + ?, bytes_out = bytes_out + ?,
		worst_kind = CASE WHEN `+exitRank("exit_code")+` < `+exitRank("CAST(? AS INTEGER)")+` THEN ? ELSE worst_kind END,
		exit_code = CASE WHEN `+exitRank("exit_code")+` < `+exitRank("CAST(? AS INTEGER)")+` THEN ? ELSE exit_code END,
		error_type = coalesce(error_type, ?), error_detail = coalesce(error_detail, ?), updated_at = ?
		WHERE id = ? AND state = 'running' RETURNING units_done, units_total`,
		sum.Converted, sum.Skipped, sum.Refused, sum.Failed, sum.Copied, sum.Ignored, sum.BytesIn, sum.BytesOut,
		code, nullString(kind), code, code, errType, errDetail, millis(time.Now()), id).Scan(&doneUnits, &total)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // canceled or deleted meanwhile: record nothing
	}
	if err != nil {
		return fmt.Errorf("count unit of batch %s: %w", id, err)
	}
	if err := insertBatchFiles(ctx, tx, id, rep.Files); err != nil {
		return err
	}
	state := StateRunning
	if doneUnits == total {
		if state, err = settleBatch(ctx, tx, id); err != nil {
			return err
		}
	}
	if err := tx.commit(); err != nil {
		return fmt.Errorf("record unit of batch %s: %w", id, err)
	}
	s.finishedBatch(id, state)
	return nil
}

// exitRank orders the exit codes of the CLI by severity, as batch.Report.ExitCode does: 0,
// then 1 (internal), then 4 (malformed, unsupported, limit), then 3 (unsafe).
func exitRank(expr string) string {
	return `(CASE ` + expr + ` WHEN 3 THEN 3 WHEN 4 THEN 2 WHEN 1 THEN 1 ELSE 0 END)`
}

// worstKind is the error kind of the report's worst refused or failed file ("" for none).
func worstKind(rep *batch.Report) string {
	code := rep.ExitCode()
	for _, f := range rep.Files {
		if f.Error != nil && (f.Outcome == batch.Refused || f.Outcome == batch.Failed) && f.Error.Type.ExitCode() == code {
			return f.Error.Type.String()
		}
	}
	if code != 0 {
		return fault.Internal.String()
	}
	return ""
}

// settleBatch gives a batch whose units are all done its final state: succeeded when every
// file was converted, copied, skipped or ignored, else failed with the worst kind among its
// files (or the error of a unit that could not finish).
func settleBatch(ctx context.Context, tx dbTx, id string) (State, error) {
	r, err := getBatch(ctx, tx, "", id)
	if err != nil {
		return "", err
	}
	state, errType, errDetail := StateSucceeded, any(nil), any(nil)
	if r.Error != nil || r.ExitCode != 0 {
		state = StateFailed
	}
	if r.Error == nil && r.ExitCode != 0 {
		errType = r.worstKind
		errDetail = fmt.Sprintf("%d files refused, %d failed", r.Summary.Refused, r.Summary.Failed)
	}
	now := millis(time.Now())
	if _, err := tx.exec(ctx, `UPDATE converter_batch SET state = ?, error_type = coalesce(error_type, ?),
		error_detail = coalesce(error_detail, ?), updated_at = ?, finished_at = ? WHERE id = ?`,
		string(state), errType, errDetail, now, now, id); err != nil {
		return "", fmt.Errorf("settle batch %s: %w", id, err)
	}
	return state, nil
}

// failBatch settles a batch that could not be planned.
func (s *Service) failBatch(ctx context.Context, id string, je JobError) error {
	now := millis(time.Now())
	n, err := s.db.exec(context.WithoutCancel(ctx), `UPDATE converter_batch SET state = 'failed', error_type = ?,
		error_detail = ?, updated_at = ?, finished_at = ? WHERE id = ? AND state IN ('queued', 'running')`,
		je.Type.String(), je.Detail, now, now, id)
	if err != nil {
		return fmt.Errorf("fail batch %s: %w", id, err)
	}
	if n == 1 {
		s.finishedBatch(id, StateFailed)
	}
	return nil
}

// finishedBatch counts and logs a batch that reached state, if it is terminal.
func (s *Service) finishedBatch(id string, state State) {
	if !state.Terminal() {
		return
	}
	s.metrics.batches.WithLabelValues(string(state)).Inc()
	s.log.Info("batch finished", slog.String("batch_id", id), slog.String("state", string(state)))
}

// insertBatchFiles records outcomes of a batch, rowsPerInsert to a statement.
func insertBatchFiles(ctx context.Context, q querier, id string, files []batch.File) error {
	for chunk := range slices.Chunk(files, rowsPerInsert) {
		values := make([]any, 0, 4*len(chunk))
		for _, f := range chunk {
			doc, err := json.Marshal(f)
			if err != nil {
				return fmt.Errorf("encode outcome of %s: %w", f.Path, err)
			}
			values = append(values, id, f.Path, f.Outcome, string(doc))
		}
		if _, err := q.exec(ctx, `INSERT INTO converter_batch_file (batch_id, path, outcome, file) VALUES `+
			rowPlaceholders(len(chunk), 4), values...); err != nil {
			return fmt.Errorf("record outcomes of batch %s: %w", id, err)
		}
	}
	return nil
}

const batchColumns = `id, tenant, state, source, destination, options, river_job_id, units_total, units_done,
	converted, skipped, refused, failed, copied, ignored, bytes_in, bytes_out, exit_code, worst_kind,
	error_type, error_detail, created_at, updated_at, started_at, finished_at`

// batchRow is a batch as stored, with what the API never sees.
type batchRow struct {
	Batch
	riverJobID int64
	planned    bool
	worstKind  string
}

func scanBatch(sc scanner) (batchRow, error) {
	var (
		r                            batchRow
		state, opts                  string
		riverID, total, started, fin sql.NullInt64
		worst, errType, errDetail    sql.NullString
		created, updated             int64
		sum                          = &r.Summary
	)
	err := sc.Scan(&r.ID, &r.Tenant, &state, &r.Source, &r.Destination, &opts, &riverID, &total, &r.UnitsDone,
		&sum.Converted, &sum.Skipped, &sum.Refused, &sum.Failed, &sum.Copied, &sum.Ignored, &sum.BytesIn, &sum.BytesOut,
		&r.ExitCode, &worst, &errType, &errDetail, &created, &updated, &started, &fin)
	if err != nil {
		return batchRow{}, err
	}
	r.State = State(state)
	if err := json.Unmarshal([]byte(opts), &r.Options); err != nil {
		return batchRow{}, fmt.Errorf("batch %s: options: %w", r.ID, err)
	}
	r.riverJobID = riverID.Int64
	r.planned, r.Units = total.Valid, int(total.Int64)
	r.worstKind = worst.String
	if errType.Valid {
		r.Error = &JobError{Detail: errDetail.String}
		if err := r.Error.Type.UnmarshalText([]byte(errType.String)); err != nil {
			return batchRow{}, fmt.Errorf("batch %s: %w", r.ID, err)
		}
	}
	r.CreatedAt, r.UpdatedAt = fromMillis(created), fromMillis(updated)
	if started.Valid {
		r.StartedAt = fromMillis(started.Int64)
	}
	if fin.Valid {
		r.FinishedAt = fromMillis(fin.Int64)
	}
	return r, nil
}

// getBatch returns the batch with id; an empty tenant matches any tenant (internal callers).
func getBatch(ctx context.Context, q querier, tenant, id string) (batchRow, error) {
	r, err := scanBatch(q.queryRow(ctx, `SELECT `+batchColumns+` FROM converter_batch WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) || err == nil && tenant != "" && r.Tenant != tenant {
		return batchRow{}, ErrNotFound
	}
	if err != nil {
		return batchRow{}, fmt.Errorf("read batch %s: %w", id, err)
	}
	return r, nil
}

// batchSchema is the batch tables, on SQLite (integer "INTEGER", collate "") or PostgreSQL
// (integer "BIGINT", collate ` COLLATE "C"`, so that ids and paths sort bytewise as on
// SQLite). units_total is NULL until the batch is planned; exit_code and worst_kind are the
// worst outcome recorded so far.
func batchSchema(integer, collate string) string {
	return strings.NewReplacer("BIGINT", integer, " COLLATE_C", collate).Replace(`
CREATE TABLE converter_batch (
	id           TEXT COLLATE_C PRIMARY KEY,
	tenant       TEXT NOT NULL,
	state        TEXT NOT NULL CHECK (state IN ('queued','running','succeeded','failed','canceled')),
	source       TEXT NOT NULL,
	destination  TEXT NOT NULL,
	options      TEXT NOT NULL,
	river_job_id BIGINT,
	units_total  INTEGER,
	units_done   INTEGER NOT NULL DEFAULT 0,
	converted    INTEGER NOT NULL DEFAULT 0,
	skipped      INTEGER NOT NULL DEFAULT 0,
	refused      INTEGER NOT NULL DEFAULT 0,
	failed       INTEGER NOT NULL DEFAULT 0,
	copied       INTEGER NOT NULL DEFAULT 0,
	ignored      INTEGER NOT NULL DEFAULT 0,
	bytes_in     BIGINT NOT NULL DEFAULT 0,
	bytes_out    BIGINT NOT NULL DEFAULT 0,
	exit_code    INTEGER NOT NULL DEFAULT 0,
	worst_kind   TEXT,
	error_type   TEXT,
	error_detail TEXT,
	created_at   BIGINT NOT NULL,
	updated_at   BIGINT NOT NULL,
	started_at   BIGINT,
	finished_at  BIGINT
);
CREATE INDEX converter_batch_tenant ON converter_batch (tenant, id);
CREATE INDEX converter_batch_finished ON converter_batch (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE converter_batch_unit (
	batch_id     TEXT COLLATE_C NOT NULL,
	seq          INTEGER NOT NULL,
	unit         TEXT NOT NULL,
	river_job_id BIGINT,
	done         INTEGER NOT NULL DEFAULT 0,
	node         TEXT,
	PRIMARY KEY (batch_id, seq)
);
CREATE TABLE converter_batch_file (
	batch_id TEXT COLLATE_C NOT NULL,
	path     TEXT COLLATE_C NOT NULL,
	outcome  TEXT NOT NULL,
	file     TEXT NOT NULL,
	PRIMARY KEY (batch_id, path)
);
`)
}
