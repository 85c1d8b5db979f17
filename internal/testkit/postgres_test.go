package testkit

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(PostgresMain(m)) }

// Each call gives its own empty database on one server, and a database is dropped when its test
// ends.
func TestStartPostgres(t *testing.T) {
	var first string
	t.Run("first", func(t *testing.T) {
		first = StartPostgres(t)
		conn := connect(t, first)
		if _, err := conn.Exec(t.Context(), "CREATE TABLE t (x int)"); err != nil {
			t.Fatal(err)
		}
	})
	second := StartPostgres(t)
	if second == first {
		t.Fatalf("two calls gave the same database %s", first)
	}
	conn := connect(t, second)
	var tables int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil || tables != 0 {
		t.Errorf("new database holds %d tables (%v), want 0", tables, err)
	}
	var exists bool
	err := conn.QueryRow(t.Context(), "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", dbName(t, first)).Scan(&exists)
	if err != nil || exists {
		t.Errorf("database of a finished test exists: %v (%v), want dropped", exists, err)
	}
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func dbName(t *testing.T, url string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}
