package testkit

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestDatabaseURLEnv names the variable that points the tests at an existing PostgreSQL
// server (a postgres:// URL whose user may create databases) instead of a throwaway cluster.
const TestDatabaseURLEnv = "CONVERTER_TEST_DATABASE_URL"

// pgStartTimeout bounds a cluster's start; it only ends a test whose server never came up.
const pgStartTimeout = 60 * time.Second

// StartPostgres returns the URL of a new, empty PostgreSQL database, dropped when t ends. The
// server is the one CONVERTER_TEST_DATABASE_URL names, or else a throwaway cluster made with
// Debian's initdb and pg_ctl (the newest under /usr/lib/postgresql), listening only on a
// private socket directory: one per test binary when the package's TestMain runs PostgresMain,
// otherwise one per test. Without PostgreSQL the test is skipped, unless the environment
// variable CI is set: there it fails, so that CI never passes without the PostgreSQL tests.
func StartPostgres(t testing.TB) string {
	t.Helper()
	server := os.Getenv(TestDatabaseURLEnv)
	if server == "" {
		c, err := pgCluster(t)
		if err != nil {
			if errors.Is(err, errNoPostgres) && os.Getenv("CI") == "" {
				t.Skipf("skipping: %v", err)
			}
			t.Fatalf("PostgreSQL test cluster: %v", err)
		}
		server = c.url("postgres")
	}
	// Unique across test binaries that share a server: crypto/rand.Text is base32, lowered
	// here to a plain identifier.
	name := "converter_test_" + strings.ToLower(rand.Text()[:12])
	if err := pgExec(t.Context(), server, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pgExec(ctx, server, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop test database: %v", err)
		}
	})
	u, err := url.Parse(server)
	if err != nil {
		t.Fatalf("%s: %v", TestDatabaseURLEnv, err)
	}
	u.Path = "/" + name
	return u.String()
}

// PostgresMain runs a package's tests and then stops the cluster StartPostgres shared among
// them, if it started one. Call it from TestMain: os.Exit(testkit.PostgresMain(m)).
func PostgresMain(m *testing.M) int {
	shared.mu.Lock()
	shared.enabled = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.cluster != nil {
		shared.cluster.stop()
	}
	return code
}

// shared is the cluster of the test binary, when its TestMain runs PostgresMain.
var shared struct {
	mu      sync.Mutex
	enabled bool
	cluster *cluster
	err     error
}

// pgCluster returns the test binary's shared cluster, or a cluster stopped when t ends.
func pgCluster(t testing.TB) (*cluster, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.enabled {
		c, err := startCluster()
		if err == nil {
			t.Cleanup(c.stop)
		}
		return c, err
	}
	if shared.cluster == nil && shared.err == nil {
		shared.cluster, shared.err = startCluster()
	}
	return shared.cluster, shared.err
}

var errNoPostgres = errors.New("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; apt-get install postgresql), and " + TestDatabaseURLEnv + " is not set")

// cluster is a PostgreSQL server run from a temporary directory.
type cluster struct {
	bin  string // the server's bin directory
	root string // the temporary directory: data/, the socket directory and the log
	cred *syscall.Credential
}

func (c *cluster) data() string    { return filepath.Join(c.root, "data") }
func (c *cluster) sockets() string { return filepath.Join(c.root, "sock") }

// url is the URL of database name on the cluster, through its socket.
func (c *cluster) url(name string) string {
	return "postgres://postgres@/" + name + "?host=" + url.QueryEscape(c.sockets())
}

// startCluster makes a cluster with initdb and starts it. PostgreSQL refuses to run as root,
// so as root the cluster belongs to the postgres user (or nobody).
func startCluster() (*cluster, error) {
	bin, err := postgresBin()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", "converter-pg-")
	if err != nil {
		return nil, err
	}
	c := &cluster{bin: bin, root: root}
	if err := c.start(); err != nil {
		os.RemoveAll(root)
		return nil, err
	}
	return c, nil
}

func (c *cluster) start() error {
	if os.Geteuid() == 0 {
		cred, err := unprivileged()
		if err != nil {
			return err
		}
		c.cred = cred
	}
	if err := os.Mkdir(c.sockets(), 0o700); err != nil {
		return err
	}
	if c.cred != nil {
		for _, dir := range []string{c.root, c.sockets()} {
			if err := os.Chown(dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
				return err
			}
		}
	}
	if err := c.run("initdb", "-D", c.data(), "-U", "postgres", "--auth=trust", "--no-sync",
		"--encoding=UTF8", "--locale=C", "--no-instructions"); err != nil {
		return err
	}
	// Only the private socket directory: no TCP port to collide with another cluster. Its
	// durability does not matter; its speed does. pg_ctl -w polls until the server accepts
	// connections.
	opts := "-c listen_addresses='' -k " + c.sockets() + " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
	return c.run("pg_ctl", "-D", c.data(), "-l", filepath.Join(c.root, "server.log"), "-o", opts,
		"-w", "-t", strconv.Itoa(int(pgStartTimeout.Seconds())), "start")
}

// stop ends the server at once (nothing in it is worth a checkpoint) and removes its files.
func (c *cluster) stop() {
	_ = c.run("pg_ctl", "-D", c.data(), "-m", "immediate", "-w", "stop")
	os.RemoveAll(c.root)
}

// run runs one of the server's programs as the cluster's owner, from its directory (which
// that owner can read, unlike perhaps the test's working directory).
func (c *cluster) run(prog string, args ...string) error {
	cmd := exec.Command(filepath.Join(c.bin, prog), args...)
	cmd.Dir = c.root
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		log, _ := os.ReadFile(filepath.Join(c.root, "server.log"))
		return fmt.Errorf("%s: %w\n%s%s", prog, err, out.Bytes(), log)
	}
	return nil
}

// postgresBin returns the bin directory of the newest PostgreSQL under /usr/lib/postgresql.
func postgresBin() (string, error) {
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(found) == 0 {
		return "", errNoPostgres
	}
	version := func(p string) int {
		v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(p))))
		return v
	}
	newest := slices.MaxFunc(found, func(a, b string) int { return version(a) - version(b) })
	return filepath.Dir(newest), nil
}

// unprivileged returns the credentials of the postgres user, or else of nobody.
func unprivileged() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 == nil && err2 == nil {
			return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
		}
	}
	return nil, errors.New("running as root and neither a postgres nor a nobody user exists to own the cluster")
}

// pgExec runs one statement on the database at url.
func pgExec(ctx context.Context, url, stmt string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, stmt)
	return err
}
