package jobs

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
)

// pgMigrations are the steps of our job schema on PostgreSQL, in order: step i takes a database
// whose converter_schema holds version i to version i+1. Step 1 is the table as SQLite's four
// steps leave it. Times are Unix milliseconds, as on SQLite, so that one set of statements
// serves both; ids compare bytewise (COLLATE "C") so that pages follow UUIDv7 order whatever
// the database's locale. To change the schema, append a step to this list and to SQLite's.
var pgMigrations = []string{`
CREATE TABLE converter_job (
	id              TEXT COLLATE "C" PRIMARY KEY,
	tenant          TEXT NOT NULL,
	state           TEXT NOT NULL CHECK (state IN ('queued','running','succeeded','failed','canceled')),
	filename        TEXT NOT NULL,
	select_path     TEXT NOT NULL DEFAULT '',
	input_size      BIGINT NOT NULL,
	input_sha256    TEXT NOT NULL,
	output_size     BIGINT,
	output_sha256   TEXT,
	manifest_sha256 TEXT,
	error_type      TEXT,
	error_detail    TEXT,
	idempotency_key TEXT,
	river_job_id    BIGINT,
	attempts        INTEGER NOT NULL DEFAULT 0,
	created_at      BIGINT NOT NULL,
	updated_at      BIGINT NOT NULL,
	started_at      BIGINT,
	finished_at     BIGINT,
	mode            TEXT NOT NULL DEFAULT 'convert',
	allow_globals   TEXT
);
CREATE UNIQUE INDEX converter_job_idempotency
	ON converter_job (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX converter_job_tenant ON converter_job (tenant, id);
CREATE INDEX converter_job_finished ON converter_job (finished_at) WHERE finished_at IS NOT NULL;
`,
	// 2: server-side batches (batches.go), as SQLite's step 5.
	batchSchema("BIGINT", ` COLLATE "C"`),
}

// migrationLock is the key of the advisory lock under which nodes migrate: "conv" in ASCII.
const migrationLock = 0x636f6e76

// MigratePostgres brings the job table and River's queue schema in the PostgreSQL database at
// url to the newest version, then returns. Service.Open does the same at start; several nodes
// may run it at once.
func MigratePostgres(ctx context.Context, url string, log *slog.Logger) error {
	pool, err := openPool(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	return migratePostgres(ctx, pool, log)
}

func openPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("open job database: %w", err) // pgx redacts the password
	}
	return pool, nil
}

// migratePostgres runs both schemas' migrations holding a session-level advisory lock on a
// connection of its own: nodes starting together wait for the first, then find nothing left to
// do, and a node that dies while migrating releases the lock with its connection. (River's
// steps cannot share one transaction: one adds an enum value that a later one uses.)
func migratePostgres(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate job database: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLock); err != nil {
		return fmt.Errorf("lock job database for migration: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrationLock)
	if err := migrateJobTable(ctx, conn); err != nil {
		return err
	}
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: log})
	if err != nil {
		return fmt.Errorf("queue migrations: %w", err)
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrate queue schema: %w", err)
	}
	return nil
}

// migrateJobTable brings the job table to the newest version in one transaction. A database
// newer than this binary is refused: its schema may mean what this code does not know.
func migrateJobTable(ctx context.Context, conn *pgxpool.Conn) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrate job schema: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS converter_schema (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrate job schema: %w", err)
	}
	var version int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM converter_schema`).Scan(&version); err != nil {
		return fmt.Errorf("read job schema version: %w", err)
	}
	if version > len(pgMigrations) {
		return fmt.Errorf("job database schema version %d is newer than this converter's (%d)", version, len(pgMigrations))
	}
	for _, step := range pgMigrations[version:] {
		version++
		if _, err := tx.Exec(ctx, step); err != nil {
			return fmt.Errorf("migrate job schema to version %d: %w", version, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM converter_schema; INSERT INTO converter_schema VALUES (`+strconv.Itoa(version)+`)`); err != nil {
			return fmt.Errorf("set job schema version %d: %w", version, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrate job schema: %w", err)
	}
	return nil
}

// openPostgres opens the job table and River's queue in the PostgreSQL database of
// Config.Database, migrating both first.
func (s *Service) openPostgres(ctx context.Context) error {
	pool, err := openPool(ctx, s.cfg.Database)
	if err != nil {
		return err
	}
	id, err := nodeID(s.cfg.Dir)
	if err != nil {
		pool.Close()
		return err
	}
	d := &pgDB{pgxQuerier: pgxQuerier{pool}, pool: pool, url: s.cfg.Database, node: id}
	s.db = d
	if err := migratePostgres(ctx, pool, s.log); err != nil {
		return err
	}
	cfg, err := s.riverConfig()
	if err != nil {
		return err
	}
	cfg.ID = id
	s.node = id
	if err := river.AddWorkerSafely(cfg.Workers, &rescueWorker{s: s}); err != nil {
		return fmt.Errorf("register rescue worker: %w", err)
	}
	// River's leader enqueues it: one node looks, for all, every RescueDelay.
	cfg.PeriodicJobs = append(cfg.PeriodicJobs, river.NewPeriodicJob(river.PeriodicInterval(s.cfg.RescueDelay),
		func() (river.JobArgs, *river.InsertOpts) { return rescueArgs{}, nil }, nil))
	if d.client, err = river.NewClient(riverpgxv5.New(pool), cfg); err != nil {
		return fmt.Errorf("create queue client: %w", err)
	}
	s.river = d.client
	return nil
}

// nodeID names this node in River's queue: the host and its data directory, which its lock
// gives to one process at a time. River requires that no two live processes share an id.
func nodeID(dir string) (string, error) {
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	sum := sha256.Sum256([]byte(abs))
	return fmt.Sprintf("%.64s_%x", host, sum[:6]), nil
}

// pgDB is the job table and River's queue in a PostgreSQL database that several nodes share.
//
// A node is alive while it holds its node lock, a session-level advisory lock keyed by its
// River client id, on a connection of its own: PostgreSQL releases it when that connection
// ends, so a killed node is seen dead as soon as its connection closes (or TCP keepalive gives
// up on a vanished host), with no heartbeat table and no clock to compare.
type pgDB struct {
	pgxQuerier
	pool   *pgxpool.Pool
	client *river.Client[pgx.Tx]
	url    string
	node   string
	alive  *pgx.Conn // holds the node lock; nil until join
}

// nodeLockClass is the first key of every node lock: "node" in ASCII. (A two-key advisory lock
// never collides with the one-key migration lock.)
const nodeLockClass = 0x6e6f6465

// nodeLockKey is the second key of node's lock.
func nodeLockKey(node string) int32 {
	h := fnv.New32a()
	h.Write([]byte(node))
	return int32(h.Sum32())
}

// join takes the node lock, after recover: until then the lock of this node's previous
// process is free, so that its entries are orphans.
func (d *pgDB) join(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, d.url)
	if err != nil {
		return fmt.Errorf("node lock: %w", err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, nodeLockClass, nodeLockKey(d.node)).Scan(&ok); err != nil || !ok {
		conn.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("node lock of %s: taken %v (another live node has this id), %v", d.node, !ok, err)
	}
	d.alive = conn
	return nil
}

func (d *pgDB) begin(ctx context.Context) (dbTx, error) {
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &riverTx[pgx.Tx]{
		querier: pgxQuerier{tx}, tx: tx, client: d.client,
		end: txEnd{
			commit:   func() error { return tx.Commit(ctx) },
			rollback: func() error { return tx.Rollback(context.WithoutCancel(ctx)) },
		},
	}, nil
}

func (d *pgDB) ping(ctx context.Context) error { return d.pool.Ping(ctx) }

func (d *pgDB) close() error {
	var err error
	if d.alive != nil {
		err = d.alive.Close(context.Background())
	}
	d.pool.Close()
	return err
}

// orphaned is true when the node that attempted the entry last holds no node lock: a
// transaction-level try of its lock succeeds (and ends with the statement).
func (d *pgDB) orphaned(ctx context.Context, rj *rivertype.JobRow) (bool, error) {
	if len(rj.AttemptedBy) == 0 {
		return false, nil
	}
	node := rj.AttemptedBy[len(rj.AttemptedBy)-1]
	var free bool
	if err := d.pool.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1, $2)`, nodeLockClass, nodeLockKey(node)).Scan(&free); err != nil {
		return false, fmt.Errorf("node lock of %s: %w", node, err)
	}
	return free, nil
}

// rescueArgs is the periodic queue entry that looks for jobs of dead nodes.
type rescueArgs struct{}

func (rescueArgs) Kind() string { return "rescue" }

func (rescueArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: queueUpkeep} }

type rescueWorker struct {
	river.WorkerDefaults[rescueArgs]
	s *Service
}

func (w *rescueWorker) Work(ctx context.Context, _ *river.Job[rescueArgs]) error {
	return w.s.rescue(ctx)
}

// pgxQuerier runs the statements through pgx: a pool or a transaction.
type pgxQuerier struct {
	q interface {
		Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
		Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
		QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	}
}

func (p pgxQuerier) exec(ctx context.Context, query string, args ...any) (int64, error) {
	tag, err := p.q.Exec(ctx, numbered(query), args...)
	return tag.RowsAffected(), err
}

func (p pgxQuerier) query(ctx context.Context, query string, args ...any) (rows, error) {
	return p.q.Query(ctx, numbered(query), args...)
}

// queryRow's Scan fails with pgx.ErrNoRows, which matches sql.ErrNoRows.
func (p pgxQuerier) queryRow(ctx context.Context, query string, args ...any) scanner {
	return p.q.QueryRow(ctx, numbered(query), args...)
}

// numbered turns the shared statements' ? placeholders into PostgreSQL's $1, $2, ...: none of
// our statements has a ? inside a literal or an identifier.
func numbered(query string) string {
	var b strings.Builder
	n := 0
	for {
		before, after, found := strings.Cut(query, "?")
		b.WriteString(before)
		if !found {
			return b.String()
		}
		n++
		b.WriteString("$" + strconv.Itoa(n))
		query = after
	}
}
