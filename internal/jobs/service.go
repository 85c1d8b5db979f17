package jobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/s3store"
)

// Config configures a Service. Zero fields take the documented defaults.
type Config struct {
	// Dir is the data directory holding the blobs (with Store, scratch space for the attempts
	// running here), and the SQLite job database unless Database is set. Required.
	Dir string
	// Database is where the job table and River's queue live: empty for the SQLite file in
	// Dir, or a PostgreSQL URL (postgres://...), which several nodes may share.
	Database string
	// RescueDelay is, on a shared database, how often one node looks for jobs whose node
	// died and queues them again (default DefaultRescueDelay).
	RescueDelay time.Duration
	// Store, when set, is the S3 prefix (s3://bucket/prefix) that keeps every job's files
	// under PREFIX/ID/; see StoreConfig.
	Store string
	// StoreConfig are the S3 store's endpoint, credentials and part sizes (the zero value: the
	// AWS SDK's standard chain and AWS_ENDPOINT_URL).
	StoreConfig s3store.Config
	// Presign, when positive with Store, makes OpenOutput's Artifact carry a presigned GET URL
	// valid this long (Artifact.Location).
	Presign time.Duration
	// StoreGrace is how old an incomplete multipart upload, or an object no job owns, must be
	// before the store's sweep removes it: longer than any upload takes (default
	// DefaultStoreGrace).
	StoreGrace time.Duration
	// Workers bounds concurrent conversions (default 1).
	Workers int
	// APIOnly makes a node that takes, serves and settles jobs but runs no conversion, for a
	// fleet whose conversions run on worker nodes. It still migrates, and still takes part in
	// the queue's upkeep (expiry, the rescue of dead nodes' jobs, River's leadership), which
	// runs on a queue of its own. Only with a PostgreSQL Database and a Store, which the nodes
	// working its jobs share: on SQLite the node is the only one, and in a data directory the
	// uploads are out of other nodes' reach, so nothing would ever work its jobs.
	APIOnly bool
	// Retention is how long finished jobs and their files are kept (default 168h).
	Retention time.Duration
	// MaxAttempts bounds the attempts of a job that fails with internal errors, its sandbox
	// child's crashes included (default 3). Unsafe, malformed and over-limit inputs fail at the
	// first attempt; an attempt interrupted by the server stopping or crashing is not counted.
	MaxAttempts int
	// Converter runs conversions. Required.
	Converter Converter
	// Limits bound each conversion; the converter enforces Limits.Timeout itself.
	Limits limits.Limits
	// Logger receives lifecycle events (default: discard).
	Logger *slog.Logger
	// Registerer receives the job metrics when set.
	Registerer prometheus.Registerer
	// MinFreeBytes is the free space the data directory keeps: an upload that would leave less
	// (counting an output as large as it) is refused with ErrInsufficientStorage, and each
	// conversion gets it as convert.Options.MinFreeBytes, checked against the planned output
	// before writing (default DefaultMinFreeBytes).
	MinFreeBytes int64
	// MaxBatchFiles bounds the entries planning lists in a batch's SOURCE: planning keeps
	// each in memory and records the outcomes and units in one transaction, so a batch over
	// it fails as over a limit, its listing stopped at the first entry past the bound
	// (default DefaultMaxBatchFiles).
	MaxBatchFiles int
}

// ErrAPIOnlyAlone is Open's refusal of Config.APIOnly without a PostgreSQL database and an S3
// store, which other nodes would share.
var ErrAPIOnlyAlone = errors.New("a node that works no conversions needs a PostgreSQL database and an S3 store shared with nodes that do: " +
	"on SQLite it is the only node, and in its data directory the uploads are out of other nodes' reach, so no one would ever work its jobs")

// DefaultMinFreeBytes is the free space kept in the data directory unless configured.
const DefaultMinFreeBytes = 1 << 30

// DefaultMaxBatchFiles is Config.MaxBatchFiles's default.
const DefaultMaxBatchFiles = 100_000

// DefaultStoreGrace is Config.StoreGrace's default.
const DefaultStoreGrace = 24 * time.Hour

// DefaultRescueDelay is how often a node of a shared database looks for jobs of dead nodes
// unless configured.
const DefaultRescueDelay = 30 * time.Second

// DefaultRetention is how long finished jobs are kept unless configured.
const DefaultRetention = 7 * 24 * time.Hour

const (
	kindConvert = "convert"
	kindExpire  = "expire"
	// queueUpkeep is the queue of the short periodic entries (expiry, rescue): every node works
	// it, one at a time, API-only nodes included, and long conversions never hold it up.
	queueUpkeep = "upkeep"
	// rescueAfter is how long River waits before finalizing a running job that was marked for
	// cancellation but whose worker never answered (a job left by a dead process). The
	// converter's own time limit (Limits.Timeout) bounds a live conversion.
	rescueAfter = 10 * time.Second
)

// Service owns the job store, the blob directory and the River client that runs conversions.
type Service struct {
	cfg     Config
	log     *slog.Logger
	blobs   *blobs    // the data directory: the database, and the files attempts work on
	store   blobStore // where jobs' files are kept
	lock    *os.File
	db      database
	river   queue
	metrics *metrics

	stopping atomic.Bool
	mu       sync.Mutex
	running  map[string]*attempt // job id -> its attempt running in this process
	// batchUnits cancel the batch units running in this process: batch id -> unit -> cancel.
	batchUnits map[string]map[int]context.CancelCauseFunc
	// node is this node's id in a shared database's queue ("" on SQLite), recorded with the
	// batch units it works.
	node string
	// stopRetry ends Start's retries on a full disk (nil when the queue started at once).
	stopRetry func()
	// stopSweep ends the store's periodic sweep (nil when there is none).
	stopSweep func()
}

// errCanceledByRequest is the cancel cause of a conversion whose job was canceled or deleted.
var errCanceledByRequest = errors.New("job canceled by request")

// Open opens (creating if needed) the data directory, migrates the job and queue schemas, and
// recovers jobs a previous process left unfinished: a job that was running is queued again at
// once. Jobs do not run until Start.
func Open(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Dir == "" {
		return nil, errors.New("jobs: data directory is required")
	}
	if cfg.Converter == nil {
		return nil, errors.New("jobs: a converter is required")
	}
	if cfg.APIOnly && (!IsPostgres(cfg.Database) || cfg.Store == "") {
		return nil, ErrAPIOnlyAlone
	}
	cfg.Workers = max(cfg.Workers, 1)
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.MinFreeBytes <= 0 {
		cfg.MinFreeBytes = DefaultMinFreeBytes
	}
	if cfg.RescueDelay <= 0 {
		cfg.RescueDelay = DefaultRescueDelay
	}
	if cfg.MaxBatchFiles <= 0 {
		cfg.MaxBatchFiles = DefaultMaxBatchFiles
	}
	cfg.Limits = cfg.Limits.OrDefault()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		cfg:     cfg,
		log:     cfg.Logger,
		blobs:   &blobs{dir: cfg.Dir, free: diskFree},
		metrics: newMetrics(),
		running: map[string]*attempt{},

		batchUnits: map[string]map[int]context.CancelCauseFunc{},
	}
	if err := s.blobs.init(); err != nil {
		return nil, err
	}
	lock, err := lockDir(s.blobs.lockPath())
	if err != nil {
		return nil, err
	}
	s.lock = lock
	// After the lock: opening an S3 store empties the scratch space.
	if s.store, err = s.openStore(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.open(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if cfg.Registerer != nil {
		for _, c := range append(s.metrics.collectors(), newStateCollector(s)) {
			if err := cfg.Registerer.Register(c); err != nil {
				s.Close()
				return nil, fmt.Errorf("register job metrics: %w", err)
			}
		}
	}
	return s, nil
}

// queue is the part of River's client that needs no transaction, whatever its driver.
type queue interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	StopAndCancel(ctx context.Context) error
	JobList(ctx context.Context, params *river.JobListParams) (*river.JobListResult, error)
	JobRetry(ctx context.Context, id int64) (*rivertype.JobRow, error)
}

// IsPostgres reports whether a Config.Database location names a PostgreSQL database.
func IsPostgres(location string) bool {
	return strings.HasPrefix(location, "postgres://") || strings.HasPrefix(location, "postgresql://")
}

func (s *Service) open(ctx context.Context) error {
	var err error
	switch {
	case IsPostgres(s.cfg.Database):
		err = s.openPostgres(ctx)
	case s.cfg.Database == "":
		err = s.openSQLite(ctx)
	default:
		return fmt.Errorf("jobs: database %q is neither empty (SQLite in the data directory) nor a postgres:// URL", s.cfg.Database)
	}
	if err != nil {
		return err
	}
	if err := s.recover(ctx); err != nil {
		return err
	}
	return s.db.join(ctx)
}

func (s *Service) openSQLite(ctx context.Context) error {
	db, err := openDB(s.blobs.dbPath())
	if err != nil {
		return err
	}
	d := &sqliteDB{sqlQuerier: sqlQuerier{db}, db: db}
	s.db = d
	if err := migrateSchema(ctx, db); err != nil {
		return err
	}
	driver := riversqlite.New(db)
	migrator, err := rivermigrate.New(driver, &rivermigrate.Config{Logger: s.log})
	if err != nil {
		return fmt.Errorf("queue migrations: %w", err)
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrate queue schema: %w", err)
	}
	cfg, err := s.riverConfig()
	if err != nil {
		return err
	}
	if d.client, err = river.NewClient(driver, cfg); err != nil {
		return fmt.Errorf("create queue client: %w", err)
	}
	s.river = d.client
	return nil
}

// riverConfig is the queue's configuration, whatever its database.
func (s *Service) riverConfig() (*river.Config, error) {
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, &convertWorker{s: s}); err != nil {
		return nil, fmt.Errorf("register convert worker: %w", err)
	}
	if err := river.AddWorkerSafely(workers, &expireWorker{s: s}); err != nil {
		return nil, fmt.Errorf("register expire worker: %w", err)
	}
	if err := s.addBatchWorkers(workers); err != nil {
		return nil, err
	}
	expireEvery := min(max(s.cfg.Retention/10, time.Second), 10*time.Minute)
	queues := map[string]river.QueueConfig{queueUpkeep: {MaxWorkers: 1}}
	if !s.cfg.APIOnly {
		queues[river.QueueDefault] = river.QueueConfig{MaxWorkers: s.cfg.Workers}
	}
	return &river.Config{
		Logger:  s.log,
		Workers: workers,
		Queues:  queues,
		// Conversions have no River timeout (convertWorker.Timeout); this one bounds the
		// short expiry job and lets RescueStuckJobsAfter be seconds rather than an hour.
		JobTimeout:           rescueAfter,
		RescueStuckJobsAfter: rescueAfter,
		// Our job table decides when to stop retrying (Config.MaxAttempts); River's bound only
		// backs it up.
		MaxAttempts: s.cfg.MaxAttempts + 2,
		RetryPolicy: retryPolicy{},
		PeriodicJobs: []*river.PeriodicJob{river.NewPeriodicJob(river.PeriodicInterval(expireEvery),
			func() (river.JobArgs, *river.InsertOpts) { return expireArgs{}, nil },
			&river.PeriodicJobOpts{RunOnStart: true})},
	}, nil
}

// retryPolicy retries internal failures after 1s, 2s, 4s, ... up to a minute: River's default
// (attempt⁴ seconds) is tuned for flaky remote calls, not for a local conversion.
type retryPolicy struct{}

func (retryPolicy) NextRetry(job *rivertype.JobRow) time.Time {
	d := time.Second << min(max(job.Attempt-1, 0), 6)
	return time.Now().Add(d)
}

// recover re-queues what a previous process left unfinished. A River job still marked running
// that the database calls an orphan (on SQLite, every one: the data directory lock means no
// other process is working on these jobs; on PostgreSQL, those of nodes that are gone, this
// one's previous process included) is re-queued.
// River's stuck-job rescuer would only retry it after the worker's timeout (hours for a big
// conversion), so the orphan is canceled (River finalizes it within RescueStuckJobsAfter) and a
// fresh queue entry is inserted in the same transaction. The interrupted attempt does not count:
// conversions run in the sandbox child, so a server crash is not the input's doing (a child
// that crashes is an attempt that failed, counted by the worker). Jobs waiting for a retry are
// made available now. Last, files no job owns are removed and succeeded jobs whose files are
// gone are marked lost, all before the service can report ready.
func (s *Service) recover(ctx context.Context) error {
	if err := s.rescue(ctx); err != nil {
		return err
	}
	waiting, err := s.riverJobs(ctx, rivertype.JobStateRetryable)
	if err != nil {
		return err
	}
	for _, rj := range waiting {
		if _, err := s.river.JobRetry(ctx, rj.ID); err != nil {
			return fmt.Errorf("reschedule queue entry %d: %w", rj.ID, err)
		}
	}
	return s.sweep(ctx)
}

// rescue queues again the jobs, and the batches' planning and units, whose queue entries are
// marked running by a process that is gone (River never rescues them itself: their workers
// have no timeout).
func (s *Service) rescue(ctx context.Context) error {
	running, err := s.riverJobs(ctx, rivertype.JobStateRunning, kindConvert, kindBatchPlan, kindBatchUnit)
	if err != nil {
		return err
	}
	for _, rj := range running {
		orphan, err := s.db.orphaned(ctx, rj)
		if err != nil {
			return err
		}
		if !orphan {
			continue
		}
		requeue := s.requeueOrphan
		if rj.Kind != kindConvert {
			requeue = s.requeueBatchEntry
		}
		if err := requeue(ctx, rj); err != nil {
			return err
		}
	}
	return nil
}

// riverJobs lists the queue entries of the kinds (conversions when none) in state.
func (s *Service) riverJobs(ctx context.Context, state rivertype.JobState, kinds ...string) ([]*rivertype.JobRow, error) {
	if len(kinds) == 0 {
		kinds = []string{kindConvert}
	}
	var out []*rivertype.JobRow
	params := river.NewJobListParams().Kinds(kinds...).States(state).First(1000)
	for {
		res, err := s.river.JobList(ctx, params)
		if err != nil {
			return nil, fmt.Errorf("list %s queue entries: %w", state, err)
		}
		out = append(out, res.Jobs...)
		if len(res.Jobs) < 1000 {
			return out, nil
		}
		params = params.After(res.LastCursor)
	}
}

func (s *Service) requeueOrphan(ctx context.Context, rj *rivertype.JobRow) error {
	var args convertArgs
	if err := unmarshalArgs(rj, &args); err != nil {
		return err
	}
	now := time.Now()
	tx, err := s.db.begin(ctx)
	if err != nil {
		return fmt.Errorf("recover job: %w", err)
	}
	defer tx.rollback()
	if err := tx.cancelEntry(ctx, rj.ID); err != nil {
		return fmt.Errorf("recover job: %w", err)
	}
	j, err := getJob(ctx, tx, "", args.JobID)
	switch {
	case errors.Is(err, ErrNotFound):
		return tx.commit() // the job was deleted; nothing to run
	case err != nil:
		return err
	}
	if j.State.Terminal() || j.riverJobID != rj.ID {
		return tx.commit()
	}
	riverID, err := tx.enqueue(ctx, convertArgs{JobID: j.ID})
	if err != nil {
		return fmt.Errorf("requeue job %s: %w", j.ID, err)
	}
	if err := setRiverJobID(ctx, tx, j.ID, riverID); err != nil {
		return err
	}
	if err := markQueued(ctx, tx, j.ID, true, now); err != nil {
		return err
	}
	if err := tx.commit(); err != nil {
		return fmt.Errorf("recover job %s: %w", j.ID, err)
	}
	s.metrics.recovered.Inc()
	s.log.Info("recovered interrupted job", slog.String("job_id", j.ID), slog.String("action", "requeued"))
	return nil
}

// sweep removes the files no job owns (blobStore.sweep) and marks lost the succeeded jobs
// whose files it found missing.
func (s *Service) sweep(ctx context.Context) error {
	lost, err := s.store.sweep(ctx, func(ctx context.Context) (map[string]jobKind, error) { return jobStates(ctx, s.db) })
	if err != nil {
		return fmt.Errorf("remove stray files: %w", err)
	}
	for _, id := range lost {
		if err := s.markLost(ctx, id, "its output or manifest is missing from the store"); err != nil {
			return err
		}
	}
	return nil
}

// Start starts running queued jobs. ctx bounds only the start itself: conversions keep
// running when it is canceled (a signal must not reach them) until Stop says otherwise. On a
// full disk the queue cannot record that it started; Start then returns nil and retries every
// startRetry until there is room, so that the server still serves reads and deletions.
func (s *Service) Start(ctx context.Context) error {
	s.startSweep(ctx)
	err := s.river.Start(context.WithoutCancel(ctx))
	if err == nil {
		return nil
	}
	if !errors.Is(noSpace(err), ErrInsufficientStorage) {
		return fmt.Errorf("start job queue: %w", err)
	}
	s.log.Warn("job queue not started: the disk is full; retrying", slog.String("error", err.Error()))
	retryCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	s.stopRetry = func() { cancel(); <-done }
	go func() {
		defer close(done)
		tick := time.NewTicker(startRetry)
		defer tick.Stop()
		for {
			select {
			case <-retryCtx.Done():
				return
			case <-tick.C:
			}
			if err := s.river.Start(context.WithoutCancel(retryCtx)); err == nil {
				s.log.Info("job queue started")
				return
			}
		}
	}()
	return nil
}

// startRetry is how often Start tries again to start the queue on a full disk.
const startRetry = 5 * time.Second

// ErrDrainTimeout is returned by Stop when conversions were still running at its deadline and
// were canceled; they are queued again and run on the next start without losing an attempt.
var ErrDrainTimeout = errors.New("conversions still running at the drain deadline were canceled and requeued")

// Stop stops claiming jobs and waits for running conversions until ctx is done; conversions
// still running then are canceled and put back in the queue, to run again on the next start,
// and Stop returns ErrDrainTimeout. Submit refuses new jobs from the moment Stop is called.
func (s *Service) Stop(ctx context.Context) error {
	s.stopping.Store(true)
	if s.stopRetry != nil {
		s.stopRetry()
	}
	if s.stopSweep != nil {
		s.stopSweep()
	}
	if err := s.river.Stop(ctx); err == nil {
		return nil
	}
	s.mu.Lock()
	canceled := len(s.running)
	s.mu.Unlock()
	hard, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.river.StopAndCancel(hard); err != nil {
		return fmt.Errorf("stop job queue: %w", err)
	}
	if canceled == 0 {
		return nil
	}
	return fmt.Errorf("%w (%d)", ErrDrainTimeout, canceled)
}

// Close releases the database and the data directory lock. Call it after Stop.
func (s *Service) Close() error {
	var err error
	if s.db != nil {
		err = s.db.close()
	}
	if s.lock != nil {
		s.lock.Close()
	}
	return err
}

// Ready reports whether the service accepts work: it is not stopping, its database and its
// S3 store (Config.Store) answer, each within a short time (the store's answer is cached for a
// second), and the data directory has Config.MinFreeBytes free. The error names what is not
// ready.
func (s *Service) Ready(ctx context.Context) error {
	if s.stopping.Load() {
		return ErrStopping
	}
	pingCtx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if err := s.db.ping(pingCtx); err != nil {
		return fmt.Errorf("job database does not answer: %w", err)
	}
	if err := s.store.ready(ctx); err != nil {
		return err
	}
	return s.blobs.ensureSpace(s.cfg.MinFreeBytes)
}

// Stage receives an upload body into staging storage while computing its SHA-256. size is the
// body's declared length, or negative when unknown. An upload the data directory cannot take
// while keeping Config.MinFreeBytes free fails with ErrInsufficientStorage. The caller turns
// the upload into a job with Submit or drops it with Upload.Discard.
func (s *Service) Stage(ctx context.Context, body io.Reader, size int64) (*Upload, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("new job id: %w", err)
	}
	return s.store.stage(ctx, id.String(), body, size)
}

// SubmitParams describe a new job.
type SubmitParams struct {
	Tenant   string
	Filename string
	Select   string
	// Mode is ModeConvert when empty.
	Mode Mode
	// AllowGlobals are admitted as inert records; the caller checks them against what the
	// server allows (see convert.Options.Validate).
	AllowGlobals   []string
	IdempotencyKey string
	Upload         *Upload // consumed: adopted by the job or discarded
}

// Submit creates a job for a staged upload and queues it durably: when Submit returns, the job
// survives a crash. A full disk fails it with ErrInsufficientStorage. With an idempotency key
// already used by this tenant, it returns the existing job (created false) if the request
// matches it, and ErrIdempotencyMismatch if not.
func (s *Service) Submit(ctx context.Context, p SubmitParams) (job Job, created bool, err error) {
	defer p.Upload.Discard()
	if s.stopping.Load() {
		return Job{}, false, ErrStopping
	}
	if p.Mode == "" {
		p.Mode = ModeConvert
	}
	if p.IdempotencyKey != "" {
		j, err := s.replay(ctx, p)
		if !errors.Is(err, ErrNotFound) {
			return j, false, err
		}
	}
	now := time.Now().UTC().Truncate(time.Millisecond) // the precision the store keeps
	j := Job{
		ID: p.Upload.id, Tenant: p.Tenant, State: StateQueued, Filename: p.Filename, Select: p.Select,
		Mode: p.Mode, AllowGlobals: p.AllowGlobals,
		InputSize: p.Upload.Size, InputSHA256: p.Upload.SHA256, IdempotencyKey: p.IdempotencyKey,
		CreatedAt: now, UpdatedAt: now,
	}
	if err := p.Upload.keep(); err != nil {
		_ = s.store.remove(context.WithoutCancel(ctx), j.ID)
		return Job{}, false, noSpace(err)
	}
	if err := s.insert(ctx, &j); err != nil {
		_ = s.store.remove(context.WithoutCancel(ctx), j.ID)
		if p.IdempotencyKey != "" && isUniqueViolation(err) {
			// A concurrent request with the same key won the race.
			j, err := s.replay(ctx, p)
			return j, false, err
		}
		return Job{}, false, noSpace(err)
	}
	return j, true, nil
}

func (s *Service) insert(ctx context.Context, j *Job) error {
	tx, err := s.db.begin(ctx)
	if err != nil {
		return fmt.Errorf("submit job: %w", err)
	}
	defer tx.rollback()
	if err := insertJob(ctx, tx, j); err != nil {
		return err
	}
	riverID, err := tx.enqueue(ctx, convertArgs{JobID: j.ID})
	if err != nil {
		return fmt.Errorf("queue job %s: %w", j.ID, err)
	}
	if err := setRiverJobID(ctx, tx, j.ID, riverID); err != nil {
		return err
	}
	if err := tx.commit(); err != nil {
		return fmt.Errorf("submit job %s: %w", j.ID, err)
	}
	return nil
}

// replay returns the job an idempotency key already names, if the request is the same one.
func (s *Service) replay(ctx context.Context, p SubmitParams) (Job, error) {
	prev, err := getByIdempotencyKey(ctx, s.db, p.Tenant, p.IdempotencyKey)
	if err != nil {
		return Job{}, err
	}
	if prev.InputSHA256 != p.Upload.SHA256 || prev.InputSize != p.Upload.Size ||
		prev.Filename != p.Filename || prev.Select != p.Select || prev.Mode != p.Mode ||
		!slices.Equal(prev.AllowGlobals, p.AllowGlobals) {
		return Job{}, ErrIdempotencyMismatch
	}
	return s.withExpiry(prev.Job), nil
}

func isUniqueViolation(err error) bool {
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) {
		return pgErr.Code == pgerrcode.UniqueViolation
	}
	// modernc reports SQLITE_CONSTRAINT_UNIQUE (2067) in its error text; its typed error lives
	// in an internal-looking package, so the code is matched on the message.
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}

func (s *Service) withExpiry(j Job) Job {
	if !j.FinishedAt.IsZero() {
		j.ExpiresAt = j.FinishedAt.Add(s.cfg.Retention)
	}
	return j
}

// Get returns a tenant's job, or ErrNotFound (also for another tenant's job). A job running in
// this process is answered from memory, with its progress: a client polling it costs no query.
func (s *Service) Get(ctx context.Context, tenant, id string) (Job, error) {
	if j, ok := s.live(tenant, id); ok {
		return j, nil
	}
	r, err := getJob(ctx, s.db, tenant, id)
	if err != nil {
		return Job{}, err
	}
	return s.withExpiry(r.Job), nil
}

// ListParams select a page of a tenant's jobs.
type ListParams struct {
	Tenant   string
	State    State // empty for all
	PageSize int
	// After is the last id of the previous page ("" for the first page).
	After string
}

// List returns a page of the tenant's jobs, newest first, and whether more follow.
func (s *Service) List(ctx context.Context, p ListParams) ([]Job, bool, error) {
	jobs, err := listJobs(ctx, s.db, p.Tenant, p.State, p.After, p.PageSize+1)
	if err != nil {
		return nil, false, err
	}
	more := len(jobs) > p.PageSize
	if more {
		jobs = jobs[:p.PageSize]
	}
	for i, j := range jobs {
		if live, ok := s.live(p.Tenant, j.ID); ok {
			j = live
		}
		jobs[i] = s.withExpiry(j)
	}
	return jobs, more, nil
}

// Cancel cancels a queued or running job and returns it. Canceling a canceled job returns it
// unchanged; canceling a succeeded or failed job is ErrConflict.
func (s *Service) Cancel(ctx context.Context, tenant, id string) (Job, error) {
	now := time.Now()
	tx, err := s.db.begin(ctx)
	if err != nil {
		return Job{}, fmt.Errorf("cancel job: %w", err)
	}
	defer tx.rollback()
	r, err := getJob(ctx, tx, tenant, id)
	if err != nil {
		return Job{}, err
	}
	switch r.State {
	case StateCanceled:
		return s.withExpiry(r.Job), nil
	case StateSucceeded, StateFailed:
		return s.withExpiry(r.Job), ErrConflict
	}
	je := JobError{Type: fault.Canceled, Detail: "canceled by request"}
	if _, err := markFinished(ctx, tx, id, StateCanceled, je, "", now, StateQueued, StateRunning); err != nil {
		return Job{}, err
	}
	if err := cancelRiverJob(ctx, tx, r.riverJobID); err != nil {
		return Job{}, err
	}
	if err := tx.commit(); err != nil {
		return Job{}, fmt.Errorf("cancel job %s: %w", id, err)
	}
	s.stopConversion(id)
	_ = s.store.remove(ctx, id, nameInput)
	s.metrics.finished.WithLabelValues(fault.Canceled.String()).Inc()
	return s.Get(ctx, tenant, id)
}

func cancelRiverJob(ctx context.Context, tx dbTx, riverID int64) error {
	if riverID == 0 {
		return nil
	}
	return tx.cancelEntry(ctx, riverID)
}

// stopConversion cancels the job's attempt running in this process, if any, and ends its live
// view: the job's record says what it is now.
func (s *Service) stopConversion(id string) {
	s.mu.Lock()
	a := s.running[id]
	if a != nil {
		a.live = false
	}
	s.mu.Unlock()
	if a != nil {
		a.cancel(errCanceledByRequest)
	}
}

// Delete removes a tenant's job and its files, canceling it first if it has not finished. The
// files go first and the row last, so that Delete works on a full disk: removing the files
// frees the room the database needs to record the deletion.
func (s *Service) Delete(ctx context.Context, tenant, id string) error {
	r, err := getJob(ctx, s.db, tenant, id)
	if err != nil {
		return err
	}
	s.stopConversion(id)
	if err := s.store.remove(ctx, id); err != nil {
		return fmt.Errorf("remove files of job %s: %w", id, err)
	}
	tx, err := s.db.begin(ctx)
	if err != nil {
		return fmt.Errorf("delete job: %w", err)
	}
	defer tx.rollback()
	if !r.State.Terminal() {
		if err := cancelRiverJob(ctx, tx, r.riverJobID); err != nil {
			return err
		}
	}
	if err := deleteJob(ctx, tx, id); err != nil {
		return err
	}
	if err := tx.commit(); err != nil {
		return fmt.Errorf("delete job %s: %w", id, err)
	}
	if !r.State.Terminal() {
		s.metrics.finished.WithLabelValues(fault.Canceled.String()).Inc()
	}
	return nil
}

// expire removes jobs and batches that finished more than Retention ago, with their files
// and outcomes.
func (s *Service) expire(ctx context.Context) error {
	horizon := time.Now().Add(-s.cfg.Retention)
	if err := s.expireBatches(ctx, horizon); err != nil {
		return err
	}
	for {
		ids, err := expired(ctx, s.db, "converter_job", horizon, 500)
		if err != nil {
			return err
		}
		for _, id := range ids {
			// Files first, as Delete does: a job that is gone has no files left (ones that
			// could not be removed are strays, which the store's sweep removes).
			if err := s.store.remove(ctx, id); err != nil {
				s.log.Warn("remove expired job files", slog.String("job_id", id), slog.String("error", err.Error()))
			}
			if err := deleteJob(ctx, s.db, id); err != nil {
				return err
			}
		}
		if len(ids) < 500 {
			return nil
		}
	}
}
