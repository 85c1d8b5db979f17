package jobs

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver (pure Go, no cgo)
)

// openDB opens the SQLite file at path the way River's SQLite driver and our own writers need
// it: WAL, fsync on every commit, a busy timeout, write transactions that take the lock when they
// begin, and a single connection so that River's concurrent internal operations never meet
// SQLITE_BUSY. The locking mode is exclusive (the data directory lock makes this process the
// only user anyway), so the WAL index lives in memory rather than in a -shm file: growing that
// file fails on a full disk, and the server must start there to let jobs be read and deleted.
func openDB(path string) (*sql.DB, error) {
	q := url.Values{}
	for _, p := range []string{"locking_mode(EXCLUSIVE)", "busy_timeout(10000)", "synchronous(FULL)", "foreign_keys(1)"} {
		q.Add("_pragma", p)
	}
	// The driver runs _pragma values sorted by name, but _journal_mode after them all: the
	// database is first read in WAL mode only once the locking mode is exclusive.
	q.Set("_journal_mode", "WAL")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open job database %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// database is where a Service keeps its job table and River's queue: a SQLite file (sqliteDB)
// or a PostgreSQL database (pgDB). Both run the same statements; only opening, migrating and
// River's driver differ.
type database interface {
	querier // statements outside a transaction
	// begin starts a transaction in which the job table and the queue change together.
	begin(ctx context.Context) (dbTx, error)
	ping(ctx context.Context) error
	close() error
	// join marks this process as a live node of the queue, once it has recovered what its
	// previous process left.
	join(ctx context.Context) error
	// orphaned reports whether the process that last attempted a queue entry marked running
	// is gone, rather than still running it.
	orphaned(ctx context.Context, rj *rivertype.JobRow) (bool, error)
}

// dbTx is a transaction over the job table and River's queue.
type dbTx interface {
	querier
	// enqueue inserts a queue entry and returns its id.
	enqueue(ctx context.Context, args river.JobArgs) (int64, error)
	// enqueueMany inserts queue entries in one statement, where enqueue takes several per
	// entry, and returns them in no particular order.
	enqueueMany(ctx context.Context, args []river.JobArgs) ([]*rivertype.JobRow, error)
	// cancelEntry cancels a queue entry; an entry already gone is not an error.
	cancelEntry(ctx context.Context, riverID int64) error
	commit() error
	rollback() error
}

// riverTx is a dbTx on River's transaction type TTx (*sql.Tx or pgx.Tx).
type riverTx[TTx any] struct {
	querier
	tx     TTx
	client *river.Client[TTx]
	end    txEnd
}

// txEnd ends a transaction; Commit and Rollback take a context on pgx.Tx, none on *sql.Tx.
type txEnd struct{ commit, rollback func() error }

func (t *riverTx[TTx]) commit() error   { return t.end.commit() }
func (t *riverTx[TTx]) rollback() error { return t.end.rollback() }

func (t *riverTx[TTx]) enqueue(ctx context.Context, args river.JobArgs) (int64, error) {
	res, err := t.client.InsertTx(ctx, t.tx, args, nil)
	if err != nil {
		return 0, err
	}
	return res.Job.ID, nil
}

func (t *riverTx[TTx]) enqueueMany(ctx context.Context, args []river.JobArgs) ([]*rivertype.JobRow, error) {
	params := make([]river.InsertManyParams, len(args))
	for i, a := range args {
		params[i] = river.InsertManyParams{Args: a}
	}
	res, err := t.client.InsertManyTx(ctx, t.tx, params)
	if err != nil {
		return nil, err
	}
	rows := make([]*rivertype.JobRow, len(res))
	for i, r := range res {
		rows[i] = r.Job
	}
	return rows, nil
}

func (t *riverTx[TTx]) cancelEntry(ctx context.Context, riverID int64) error {
	if _, err := t.client.JobCancelTx(ctx, t.tx, riverID); err != nil && !errors.Is(err, river.ErrNotFound) {
		return fmt.Errorf("cancel queue entry %d: %w", riverID, err)
	}
	return nil
}

// sqliteDB is the embedded default: one SQLite file in the data directory, which the
// directory lock makes this process's alone.
type sqliteDB struct {
	sqlQuerier
	db     *sql.DB
	client *river.Client[*sql.Tx]
}

func (d *sqliteDB) begin(ctx context.Context) (dbTx, error) {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	return &riverTx[*sql.Tx]{querier: sqlQuerier{tx}, tx: tx, client: d.client, end: txEnd{tx.Commit, tx.Rollback}}, nil
}

func (d *sqliteDB) ping(ctx context.Context) error { return d.db.PingContext(ctx) }
func (d *sqliteDB) close() error                   { return d.db.Close() }

// join has nothing to do: the data directory lock makes this process the file's only user.
func (d *sqliteDB) join(context.Context) error { return nil }

// orphaned is always true: only recover asks, before this process runs anything, and the
// data directory lock means no other process can be running the entry.
func (d *sqliteDB) orphaned(context.Context, *rivertype.JobRow) (bool, error) { return true, nil }

// migration is one step of our own job schema, run in the transaction that records its version.
type migration func(ctx context.Context, tx *sql.Tx) error

// migrations are the steps of our own job schema, in order: step i takes a database whose
// PRAGMA user_version is i to version i+1. River keeps its queue in its own river_* tables of
// the same file, migrated by River. Times are Unix milliseconds. To change the schema, append a
// step; never edit one that has shipped. The steps tolerate a database from before versioning
// (version 0, with the table and perhaps the manifest digest column already there).
var migrations = []migration{
	// 1: the job table.
	execStep(schemaV1),
	// 2: the manifest's digest, so that a download of a corrupted manifest is refused; rows
	// from before it have none and their manifests are served unverified.
	addColumn("converter_job", "manifest_sha256", "TEXT"),
	// 3: scan-only jobs.
	addColumn("converter_job", "mode", "TEXT NOT NULL DEFAULT 'convert'"),
	// 4: the globals a job admits as inert records, a JSON array (NULL for none).
	addColumn("converter_job", "allow_globals", "TEXT"),
	// 5: server-side batches (batches.go).
	execStep(batchSchema("INTEGER", "")),
}

const schemaV1 = `
CREATE TABLE IF NOT EXISTS converter_job (
	id              TEXT PRIMARY KEY,
	tenant          TEXT NOT NULL,
	state           TEXT NOT NULL CHECK (state IN ('queued','running','succeeded','failed','canceled')),
	filename        TEXT NOT NULL,
	select_path     TEXT NOT NULL DEFAULT '',
	input_size      INTEGER NOT NULL,
	input_sha256    TEXT NOT NULL,
	output_size     INTEGER,
	output_sha256   TEXT,
	error_type      TEXT,
	error_detail    TEXT,
	idempotency_key TEXT,
	river_job_id    INTEGER,
	attempts        INTEGER NOT NULL DEFAULT 0,
	created_at      INTEGER NOT NULL,
	updated_at      INTEGER NOT NULL,
	started_at      INTEGER,
	finished_at     INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS converter_job_idempotency
	ON converter_job (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS converter_job_tenant ON converter_job (tenant, id);
CREATE INDEX IF NOT EXISTS converter_job_finished ON converter_job (finished_at) WHERE finished_at IS NOT NULL;
`

// execStep is a migration of plain SQL statements.
func execStep(stmts string) migration {
	return func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, stmts)
		return err
	}
}

// addColumn is a migration that adds a column unless the table already has it.
func addColumn(table, column, decl string) migration {
	return func(ctx context.Context, tx *sql.Tx) error {
		var n int
		err := tx.QueryRowContext(ctx, `SELECT count(*) FROM pragma_table_info(?) WHERE name = ?`, table, column).Scan(&n)
		if err != nil || n > 0 {
			return err
		}
		_, err = tx.ExecContext(ctx, fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", table, column, decl))
		return err
	}
}

// migrateSchema brings the job schema to the newest version, one step at a time, each step and
// its version number in one transaction. A database newer than this binary is refused: its
// schema may mean what this code does not know.
func migrateSchema(ctx context.Context, db *sql.DB) error {
	for {
		done, err := migrateStep(ctx, db)
		if err != nil || done {
			return err
		}
	}
}

// migrateStep applies the next migration, if any, and reports whether none was left.
func migrateStep(ctx context.Context, db *sql.DB) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("migrate job schema: %w", err)
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return false, fmt.Errorf("read job schema version: %w", err)
	}
	switch {
	case version > len(migrations):
		return false, fmt.Errorf("job database schema version %d is newer than this converter's (%d)", version, len(migrations))
	case version == len(migrations):
		return true, nil
	}
	if err := migrations[version](ctx, tx); err != nil {
		return false, fmt.Errorf("migrate job schema to version %d: %w", version+1, err)
	}
	// PRAGMA takes no bound parameters; the version is an integer of ours.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", version+1)); err != nil {
		return false, fmt.Errorf("set job schema version %d: %w", version+1, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("migrate job schema to version %d: %w", version+1, err)
	}
	return false, nil
}

// querier runs the job table's statements, on SQLite (sqlQuerier) or PostgreSQL (pgxQuerier),
// in a transaction or not. The statements are written once, with ? placeholders, in the SQL
// both databases accept.
type querier interface {
	// exec runs a statement and returns the number of rows it changed.
	exec(ctx context.Context, query string, args ...any) (int64, error)
	query(ctx context.Context, query string, args ...any) (rows, error)
	// queryRow runs a query for one row; its Scan fails with an error matching sql.ErrNoRows
	// when there is none.
	queryRow(ctx context.Context, query string, args ...any) scanner
}

// rows is a query's result, read as *sql.Rows is.
type rows interface {
	scanner
	Next() bool
	Err() error
	Close()
}

// sqlQuerier runs the statements through database/sql: a *sql.DB or a *sql.Tx.
type sqlQuerier struct {
	q interface {
		ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
		QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
		QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	}
}

func (s sqlQuerier) exec(ctx context.Context, query string, args ...any) (int64, error) {
	res, err := s.q.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (s sqlQuerier) query(ctx context.Context, query string, args ...any) (rows, error) {
	r, err := s.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{r}, nil
}

func (s sqlQuerier) queryRow(ctx context.Context, query string, args ...any) scanner {
	return s.q.QueryRowContext(ctx, query, args...)
}

// sqlRows is *sql.Rows whose Close error is dropped, as pgx's is: a read's error is in Err.
type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { r.Rows.Close() }

const jobColumns = `id, tenant, state, filename, select_path, input_size, input_sha256, output_size,
	output_sha256, manifest_sha256, error_type, error_detail, idempotency_key, river_job_id, attempts, created_at,
	updated_at, started_at, finished_at, mode, allow_globals`

// row is a job as stored, with what the API never sees: the River job id and the manifest's
// digest ("" for rows older than the column).
type row struct {
	Job
	riverJobID     int64
	manifestSHA256 string
}

// hasReport reports whether the job has a scan report: a succeeded job's manifest, or the
// stored report of a file a conversion refused (a job that failed as lost keeps the digest of
// a manifest that is gone).
func (r row) hasReport() bool {
	switch {
	case r.State == StateSucceeded:
		return true
	case r.State != StateFailed || r.manifestSHA256 == "" || r.Error == nil:
		return false
	}
	return reported(r.Error.Type)
}

type scanner interface{ Scan(dest ...any) error }

func scanJob(s scanner) (row, error) {
	var (
		r                                      row
		state                                  string
		outSize, riverID, started, fin         sql.NullInt64
		outSHA, manSHA, errType, errDetail, ik sql.NullString
		allow                                  sql.NullString
		created, updated                       int64
		mode                                   string
	)
	err := s.Scan(&r.ID, &r.Tenant, &state, &r.Filename, &r.Select, &r.InputSize, &r.InputSHA256,
		&outSize, &outSHA, &manSHA, &errType, &errDetail, &ik, &riverID, &r.Attempts, &created, &updated,
		&started, &fin, &mode, &allow)
	if err != nil {
		return row{}, err
	}
	r.State = State(state)
	r.Mode = Mode(mode)
	if allow.Valid {
		if err := json.Unmarshal([]byte(allow.String), &r.AllowGlobals); err != nil {
			return row{}, fmt.Errorf("job %s: allowed globals: %w", r.ID, err)
		}
	}
	r.OutputSize = outSize.Int64
	r.OutputSHA256 = outSHA.String
	r.manifestSHA256 = manSHA.String
	if errType.Valid {
		r.Error = &JobError{Detail: errDetail.String}
		if err := r.Error.Type.UnmarshalText([]byte(errType.String)); err != nil {
			return row{}, fmt.Errorf("job %s: %w", r.ID, err)
		}
	}
	r.HasReport = r.hasReport()
	r.IdempotencyKey = ik.String
	r.riverJobID = riverID.Int64
	r.CreatedAt = fromMillis(created)
	r.UpdatedAt = fromMillis(updated)
	if started.Valid {
		r.StartedAt = fromMillis(started.Int64)
	}
	if fin.Valid {
		r.FinishedAt = fromMillis(fin.Int64)
	}
	return r, nil
}

func millis(t time.Time) int64 { return t.UnixMilli() }

func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

func insertJob(ctx context.Context, q querier, j *Job) error {
	var allow sql.NullString
	if len(j.AllowGlobals) > 0 {
		b, err := json.Marshal(j.AllowGlobals)
		if err != nil {
			return fmt.Errorf("insert job %s: %w", j.ID, err)
		}
		allow = nullString(string(b))
	}
	_, err := q.exec(ctx, `INSERT INTO converter_job
		(id, tenant, state, filename, select_path, input_size, input_sha256, idempotency_key,
		 attempts, created_at, updated_at, mode, allow_globals)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)`,
		j.ID, j.Tenant, string(j.State), j.Filename, j.Select, j.InputSize, j.InputSHA256,
		nullString(j.IdempotencyKey), millis(j.CreatedAt), millis(j.UpdatedAt), string(j.Mode), allow)
	if err != nil {
		return fmt.Errorf("insert job %s: %w", j.ID, err)
	}
	return nil
}

func setRiverJobID(ctx context.Context, q querier, id string, riverID int64) error {
	_, err := q.exec(ctx, `UPDATE converter_job SET river_job_id = ? WHERE id = ?`, riverID, id)
	if err != nil {
		return fmt.Errorf("record queue entry of job %s: %w", id, err)
	}
	return nil
}

// getJob returns the job with id; an empty tenant matches any tenant (internal callers).
func getJob(ctx context.Context, q querier, tenant, id string) (row, error) {
	r, err := scanJob(q.queryRow(ctx, `SELECT `+jobColumns+` FROM converter_job WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) || err == nil && tenant != "" && r.Tenant != tenant {
		return row{}, ErrNotFound
	}
	if err != nil {
		return row{}, fmt.Errorf("read job %s: %w", id, err)
	}
	return r, nil
}

func getByIdempotencyKey(ctx context.Context, q querier, tenant, key string) (row, error) {
	r, err := scanJob(q.queryRow(ctx, `SELECT `+jobColumns+` FROM converter_job
		WHERE tenant = ? AND idempotency_key = ?`, tenant, key))
	if errors.Is(err, sql.ErrNoRows) {
		return row{}, ErrNotFound
	}
	if err != nil {
		return row{}, fmt.Errorf("look up idempotency key: %w", err)
	}
	return r, nil
}

// listJobs returns up to limit jobs of tenant older than beforeID (all when empty), newest
// first. UUIDv7 ids sort by creation time.
func listJobs(ctx context.Context, q querier, tenant string, state State, beforeID string, limit int) ([]Job, error) {
	var (
		where = []string{"tenant = ?"}
		args  = []any{tenant}
	)
	if state != "" {
		where = append(where, "state = ?")
		args = append(args, string(state))
	}
	if beforeID != "" {
		where = append(where, "id < ?")
		args = append(args, beforeID)
	}
	args = append(args, limit)
	rows, err := q.query(ctx, `SELECT `+jobColumns+` FROM converter_job WHERE `+
		strings.Join(where, " AND ")+` ORDER BY id DESC LIMIT ?`, args...)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	defer rows.Close()
	var out []Job
	for rows.Next() {
		r, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("list jobs: %w", err)
		}
		out = append(out, r.Job)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	return out, nil
}

// markRunning starts an attempt of a queued (or interrupted running) job and reports whether it
// did; a job that was canceled or deleted meanwhile is left alone.
func markRunning(ctx context.Context, q querier, id string, now time.Time) (bool, error) {
	n, err := q.exec(ctx, `UPDATE converter_job SET state = 'running', attempts = attempts + 1,
		started_at = coalesce(started_at, ?), updated_at = ?
		WHERE id = ? AND state IN ('queued', 'running')`, millis(now), millis(now), id)
	if err != nil {
		return false, fmt.Errorf("start job %s: %w", id, err)
	}
	return n == 1, nil
}

// markQueued puts a running job back in the queue (a retry, a shutdown, a crash); uncount
// takes back the attempt when the interruption was not the job's fault.
func markQueued(ctx context.Context, q querier, id string, uncount bool, now time.Time) error {
	dec := 0
	if uncount {
		dec = 1
	}
	// CASE rather than max(attempts - ?, 0): PostgreSQL's max is only an aggregate.
	_, err := q.exec(ctx, `UPDATE converter_job SET state = 'queued',
		attempts = CASE WHEN attempts >= ? THEN attempts - ? ELSE 0 END,
		updated_at = ? WHERE id = ? AND state = 'running'`, dec, dec, millis(now), id)
	if err != nil {
		return fmt.Errorf("requeue job %s: %w", id, err)
	}
	return nil
}

// markSucceeded records the verified output and the manifest digest of a running job and
// reports whether the job was still running (not canceled or deleted meanwhile).
func markSucceeded(ctx context.Context, q querier, id string, size int64, sha, manifestSHA string, now time.Time) (bool, error) {
	n, err := q.exec(ctx, `UPDATE converter_job SET state = 'succeeded', output_size = ?,
		output_sha256 = ?, manifest_sha256 = ?, error_type = NULL, error_detail = NULL, updated_at = ?,
		finished_at = ? WHERE id = ? AND state = 'running'`, size, sha, manifestSHA, millis(now), millis(now), id)
	if err != nil {
		return false, fmt.Errorf("record success of job %s: %w", id, err)
	}
	return n == 1, nil
}

// markFinished moves a job that is in one of the from states to a terminal failed or canceled
// state with its error, and the digest of its scan report when reportSHA is set, and reports
// whether it did.
func markFinished(ctx context.Context, q querier, id string, state State, je JobError, reportSHA string, now time.Time, from ...State) (bool, error) {
	args := []any{string(state), je.Type.String(), je.Detail, nullString(reportSHA), millis(now), millis(now), id}
	marks := make([]string, len(from))
	for i, s := range from {
		marks[i] = "?"
		args = append(args, string(s))
	}
	n, err := q.exec(ctx, `UPDATE converter_job SET state = ?, error_type = ?, error_detail = ?,
		manifest_sha256 = coalesce(?, manifest_sha256), updated_at = ?, finished_at = ? WHERE id = ? AND state IN (`+strings.Join(marks, ",")+`)`, args...)
	if err != nil {
		return false, fmt.Errorf("finish job %s: %w", id, err)
	}
	return n == 1, nil
}

func deleteJob(ctx context.Context, q querier, id string) error {
	if _, err := q.exec(ctx, `DELETE FROM converter_job WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete job %s: %w", id, err)
	}
	return nil
}

// expired returns the ids of up to limit rows of table (converter_job, converter_batch)
// finished before horizon, oldest first.
func expired(ctx context.Context, q querier, table string, horizon time.Time, limit int) ([]string, error) {
	rows, err := q.query(ctx, `SELECT id FROM `+table+` WHERE finished_at IS NOT NULL
		AND finished_at < ? ORDER BY finished_at LIMIT ?`, millis(horizon), limit)
	if err != nil {
		return nil, fmt.Errorf("find expired rows of "+table+": %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("find expired rows of "+table+": %w", err)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// countByState returns the number of jobs in each state, for the queue gauges.
func countByState(ctx context.Context, q querier) (map[State]int, error) {
	rows, err := q.query(ctx, `SELECT state, count(*) FROM converter_job GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	defer rows.Close()
	out := map[State]int{}
	for rows.Next() {
		var (
			s string
			n int
		)
		if err := rows.Scan(&s, &n); err != nil {
			return nil, fmt.Errorf("count jobs: %w", err)
		}
		out[State(s)] = n
	}
	return out, rows.Err()
}

// jobKind is what decides which files a job owns.
type jobKind struct {
	state State
	mode  Mode
}

// jobStates returns the state and mode of every job, for telling which files in the data
// directory a job owns.
func jobStates(ctx context.Context, q querier) (map[string]jobKind, error) {
	rows, err := q.query(ctx, `SELECT id, state, mode FROM converter_job`)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	defer rows.Close()
	states := map[string]jobKind{}
	for rows.Next() {
		var id, state, mode string
		if err := rows.Scan(&id, &state, &mode); err != nil {
			return nil, fmt.Errorf("list jobs: %w", err)
		}
		states[id] = jobKind{state: State(state), mode: Mode(mode)}
	}
	return states, rows.Err()
}
