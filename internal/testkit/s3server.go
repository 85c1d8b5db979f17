package testkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// VersitygwModule is the S3-compatible gateway the tests run: a real server with a POSIX
// backend, not an in-process fake (fakes have stored aws-chunked framing as object bytes).
const VersitygwModule = "github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// s3StartTimeout bounds how long a started server may take to answer; it only ends a test
// whose server never came up.
const s3StartTimeout = 30 * time.Second

// S3Server is a versitygw process on a loopback port, serving the buckets under a temporary
// directory. It is stopped when the test that started it ends. A test opens a tree on it with
//
//	s3store.New(ctx, "s3://"+srv.Bucket(t)+"/prefix", s3store.Config{Endpoint: srv.Endpoint,
//		Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, "")})
//
// and runs a child process (the CLI) with srv.Env() in its environment.
type S3Server struct {
	Endpoint  string // for example "http://127.0.0.1:40123"
	AccessKey string
	SecretKey string
	Region    string
	root      string
	buckets   atomic.Int32
}

// StartS3 starts an S3 server for t, building versitygw first if no test on this machine has
// (into the user cache directory, a few minutes the first time). When it cannot be built (no
// network, no module proxy) the test is skipped, unless the environment variable CI is set:
// there it fails, so that CI never passes without the S3 tests.
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	bin, err := versitygw()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and the S3 test server cannot be built: %v", err)
		}
		t.Skipf("skipping: the S3 test server cannot be built: %v", err)
	}
	s := &S3Server{AccessKey: "testkey", SecretKey: "testsecret1234", Region: "us-east-1", root: t.TempDir()}
	// Another process may take the free port between our probe and the server's bind; a few
	// tries make that vanishingly rare.
	for try := 1; ; try++ {
		err := s.start(t, bin)
		if err == nil {
			return s
		}
		if try == 3 {
			t.Fatalf("S3 test server: %v", err)
		}
	}
}

// start runs the server on a free port and waits until it answers HTTP.
func (s *S3Server) start(t testing.TB, bin string) error {
	addr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	dir := t.TempDir()
	iam := filepath.Join(dir, "iam")
	if err := os.Mkdir(iam, 0o700); err != nil {
		return err
	}
	log, err := os.Create(filepath.Join(dir, "versitygw.log"))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(bin, "--port", addr, "--access", s.AccessKey, "--secret", s.SecretKey,
		"--iam-dir", iam, "posix", s.root)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	s.Endpoint = "http://" + addr
	if err := waitHTTP(s.Endpoint, exited); err != nil {
		stop()
		out, _ := os.ReadFile(log.Name())
		return fmt.Errorf("%w; its output:\n%s", err, out)
	}
	t.Cleanup(stop)
	return nil
}

// waitHTTP polls url until it gives any HTTP answer (an anonymous request is refused, which
// proves the server is serving), the process exits, or s3StartTimeout passes.
func waitHTTP(url string, exited <-chan error) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.After(s3StartTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("versitygw exited before answering: %v", err)
		case <-deadline:
			return fmt.Errorf("versitygw did not answer at %s within %v", url, s3StartTimeout)
		case <-tick.C:
		}
	}
}

func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Bucket creates an empty bucket and returns its name. The POSIX backend serves every
// directory of its root as a bucket of the root account, so no request is needed.
func (s *S3Server) Bucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("bucket-%d", s.buckets.Add(1))
	if err := os.Mkdir(filepath.Join(s.root, name), 0o755); err != nil {
		t.Fatal(err)
	}
	return name
}

// Credentials are the server's static credentials.
func (s *S3Server) Credentials() aws.CredentialsProvider {
	return credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, "")
}

// Client is a client of the server, for what a test checks from outside the code under test.
func (s *S3Server) Client() *s3.Client {
	return s3.New(s3.Options{Region: s.Region, BaseEndpoint: aws.String(s.Endpoint), UsePathStyle: true, Credentials: s.Credentials()})
}

// Keys lists the keys of the objects in bucket, in order.
func (s *S3Server) Keys(t testing.TB, bucket string) []string {
	t.Helper()
	var keys []string
	pages := s3.NewListObjectsV2Paginator(s.Client(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(context.Background())
		if err != nil {
			t.Fatalf("list %s: %v", bucket, err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return keys
}

// Uploads lists the keys of the incomplete multipart uploads in bucket.
func (s *S3Server) Uploads(t testing.TB, bucket string) []string {
	t.Helper()
	out, err := s.Client().ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatalf("list multipart uploads of %s: %v", bucket, err)
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, aws.ToString(u.Key))
	}
	return keys
}

// Env returns the environment that points the AWS SDK's standard configuration chain at the
// server, with the user's ~/.aws files out of the way: for a child process such as the CLI.
func (s *S3Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=" + s.Region,
		"AWS_ENDPOINT_URL=" + s.Endpoint,
		"AWS_CONFIG_FILE=" + os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
	}
}

// versitygw returns the path of the versitygw binary, building it once per test binary.
var versitygw = sync.OnceValues(func() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	_, version, _ := strings.Cut(VersitygwModule, "@")
	dir := filepath.Join(cache, "ptsafe-converter", "versitygw-"+version)
	bin := filepath.Join(dir, "versitygw")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// Test packages run in parallel processes: each builds into its own directory and renames
	// the result into place, so a binary at bin is always complete.
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("go", "install", VersitygwModule)
	// Outside our module, so that its go.mod and CI's GOFLAGS=-mod=readonly do not apply: an
	// install of a module@version resolves its own dependencies.
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS="+withoutModFlag(os.Getenv("GOFLAGS")), "GOWORK=off")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go install %s: %w\n%s", VersitygwModule, err, out.Bytes())
	}
	if err := os.Rename(filepath.Join(tmp, "versitygw"), bin); err != nil {
		return "", errors.Join(errors.New("cannot move the versitygw binary into the cache"), err)
	}
	return bin, nil
})

// withoutModFlag removes -mod=... from a GOFLAGS value, keeping the other flags.
func withoutModFlag(goflags string) string {
	var kept []string
	for _, f := range strings.Fields(goflags) {
		if !strings.HasPrefix(f, "-mod=") && !strings.HasPrefix(f, "--mod=") {
			kept = append(kept, f)
		}
	}
	return strings.Join(kept, " ")
}
