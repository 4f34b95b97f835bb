package main

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// heraldBin is the binary built once for these tests, so they exercise exactly what an
// operator runs.
var heraldBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "herald-bin")
	if err != nil {
		panic(err)
	}
	heraldBin = filepath.Join(dir, "herald")
	if out, err := exec.Command("go", "build", "-o", heraldBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build herald: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs the herald binary with the given database, stdin and arguments.
func run(t *testing.T, dsn, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(heraldBin, args...)
	cmd.Env = append(os.Environ(), "HERALD_DB="+dsn, "HERALD_LOG_LEVEL=warn")
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// server is a running `herald serve` child process.
type server struct {
	cmd    *exec.Cmd
	addr   string
	stdout *syncBuffer
}

// syncBuffer is the child's standard output: os/exec copies into it on a goroutine of its own
// while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startServer(t *testing.T, dsn string, env ...string) *server {
	t.Helper()
	addr := freeAddr(t)
	cmd := exec.Command(heraldBin, "serve")
	cmd.Env = append(append(os.Environ(), "HERALD_DB="+dsn, "HERALD_ADDR="+addr, "HERALD_LOG_LEVEL=warn"), env...)
	stdout := &syncBuffer{}
	cmd.Stdout = stdout
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, bufio.NewReader(stderr))
	s := &server{cmd: cmd, addr: addr, stdout: stdout}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("herald serve did not answer /healthz on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and expects a clean exit.
func (s *server) stop(t *testing.T) {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("herald serve did not exit cleanly on SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("herald serve did not stop within 30s of SIGTERM")
	}
}

func getJSON(t *testing.T, url, token string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestBinaryOnEachEngine(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(string(eng), func(t *testing.T) {
			dsn := storetest.DSN(t, eng)
			if out, err := run(t, dsn, "", "migrate"); err != nil || !strings.Contains(out, "migration(s) applied") {
				t.Fatalf("migrate: %v\n%s", err, out)
			}

			// First start: the administrator is created and its password printed once.
			s := startServer(t, dsn)
			out := s.stdout.String()
			if !strings.Contains(out, `Created the administrator "admin"`) {
				t.Fatalf("first start did not print the administrator's password:\n%s", out)
			}
			code, health := getJSON(t, "http://"+s.addr+"/healthz", "")
			if code != 200 || health["database"] != string(eng) {
				t.Fatalf("healthz = %d %v", code, health)
			}
			if code, body := getJSON(t, "http://"+s.addr+"/api/v1/me", ""); code != 401 || body["error"] == nil {
				t.Fatalf("unauthenticated /me = %d %v", code, body)
			}

			// Administration commands run beside the server on the same database.
			if out, err := run(t, dsn, "marie's password\n", "user", "add", "--login", "marie", "--role", "Start deliveries", "--password-stdin"); err != nil {
				t.Fatalf("user add: %v\n%s", err, out)
			}
			if out, err := run(t, dsn, "a long password\n", "user", "add", "--login", "bad", "--role", "Send", "--password-stdin"); err == nil || !strings.Contains(out, `unknown role "Send"`) {
				t.Fatalf("user add with an unknown role: %v\n%s", err, out)
			}
			tok, err := run(t, dsn, "", "token", "create", "--login", "marie")
			if err != nil {
				t.Fatalf("token create: %v\n%s", err, tok)
			}
			secret := strings.Fields(tok)[0]
			code, me := getJSON(t, "http://"+s.addr+"/api/v1/me", secret)
			if code != 200 || me["login"] != "marie" {
				t.Fatalf("/me with the CLI token = %d %v", code, me)
			}
			roles, _ := me["roles"].([]any)
			if len(roles) != 1 || roles[0] != "Start deliveries" {
				t.Fatalf("marie's roles = %v", roles)
			}
			if code, _ := getJSON(t, "http://"+s.addr+"/api/v1/users", secret); code != 403 {
				t.Fatalf("marie listing users = %d, want 403", code)
			}
			list, err := run(t, dsn, "", "user", "list")
			if err != nil || !strings.Contains(list, "marie") || !strings.Contains(list, "Administrators") {
				t.Fatalf("user list: %v\n%s", err, list)
			}
			if out, err := run(t, dsn, "", "user", "disable", "--login", "marie"); err != nil {
				t.Fatalf("user disable: %v\n%s", err, out)
			}
			if code, _ := getJSON(t, "http://"+s.addr+"/api/v1/me", secret); code != 401 {
				t.Fatalf("disabled user's token = %d, want 401", code)
			}
			if out, err := run(t, dsn, "", "user", "enable", "--login", "marie"); err != nil {
				t.Fatalf("user enable: %v\n%s", err, out)
			}
			if out, err := run(t, dsn, "", "user", "set-roles", "--login", "marie", "--role", "Export"); err != nil || !strings.Contains(out, "Export") {
				t.Fatalf("user set-roles: %v\n%s", err, out)
			}
			if code, me := getJSON(t, "http://"+s.addr+"/api/v1/me", secret); code != 200 || fmt.Sprint(me["roles"]) != "[Export]" {
				t.Fatalf("roles after set-roles = %d %v", code, me)
			}
			if out, err := run(t, dsn, "", "token", "revoke", "--id", "1"); err != nil {
				t.Fatalf("token revoke: %v\n%s", err, out)
			}
			if code, _ := getJSON(t, "http://"+s.addr+"/api/v1/me", secret); code != 401 {
				t.Fatalf("revoked token = %d, want 401", code)
			}
			s.stop(t)

			// Second start: no new administrator, no password printed.
			s = startServer(t, dsn)
			if strings.Contains(s.stdout.String(), "Created the administrator") {
				t.Fatal("second start created another administrator")
			}
			s.stop(t)
		})
	}
}

func TestAdminPasswordFromEnvironment(t *testing.T) {
	dsn := storetest.DSN(t, store.SQLite)
	s := startServer(t, dsn, "HERALD_ADMIN_PASSWORD=from the environment")
	if strings.Contains(s.stdout.String(), "Created the administrator") {
		t.Fatal("the password from HERALD_ADMIN_PASSWORD was printed")
	}
	body := strings.NewReader(`{"login": "admin", "password": "from the environment"}`)
	resp, err := http.Post("http://"+s.addr+"/api/v1/session", "application/json", body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("login with HERALD_ADMIN_PASSWORD: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	s.stop(t)
}

func TestVersionAndBadConfig(t *testing.T) {
	out, err := run(t, "x.db", "", "version")
	if err != nil || !strings.HasPrefix(out, "herald ") {
		t.Fatalf("version: %v %q", err, out)
	}
	cmd := exec.Command(heraldBin, "serve")
	cmd.Env = append(os.Environ(), "HERALD_DB="+filepath.Join(t.TempDir(), "h.db"), "HERALD_PUBLIC_URL=ftp://x")
	b, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "HERALD_PUBLIC_URL") {
		t.Fatalf("bad HERALD_PUBLIC_URL: %v %s", err, b)
	}
}

func TestBounceClassify(t *testing.T) {
	out, err := run(t, "x.db", "", "bounce", "classify", "../../internal/bounce/testdata/dsn-postfix.eml", "../../internal/bounce/testdata/arf.eml")
	if err != nil {
		t.Fatalf("bounce classify: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var hard, complaint bool
	for _, l := range lines {
		var rec struct {
			File, Recipient, Status, Reason string
			Hard                            *bool
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("not a JSON line: %q", l)
		}
		if strings.HasSuffix(rec.File, "dsn-postfix.eml") && rec.Hard != nil && *rec.Hard && rec.Reason == "userunknown" {
			hard = true
		}
		if strings.HasSuffix(rec.File, "arf.eml") && rec.Hard == nil && rec.Reason == "feedback" {
			complaint = true
		}
	}
	if !hard || !complaint {
		t.Fatalf("classify output lacks the hard bounce or the complaint:\n%s", out)
	}
	if out, err := run(t, "x.db", "", "bounce", "classify", "/no/such/file.eml"); err == nil || !strings.Contains(out, "no such file") {
		t.Fatalf("missing file: %v %s", err, out)
	}
}

func TestImportProfilesCommand(t *testing.T) {
	dsn := storetest.DSN(t, store.SQLite)
	file := filepath.Join(t.TempDir(), "people.csv")
	csv := "email,city\nann@example.com,Paris\nnot-an-email,Lyon\nbob@example.com,Oslo\n"
	if err := os.WriteFile(file, []byte(csv), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, dsn, "", "import", "profiles", file)
	if err != nil || !strings.Contains(out, "2 created") || !strings.Contains(out, "1 rejected") || !strings.Contains(out, "line 3, column 1 (email)") {
		t.Fatalf("import: %v\n%s", err, out)
	}
	out, err = run(t, dsn, csv, "import", "profiles", "--json", "-")
	if err != nil || !strings.Contains(out, `"unchanged": 2`) {
		t.Fatalf("re-import from stdin: %v\n%s", err, out)
	}
	if out, err := run(t, dsn, "", "import", "profiles", "/no/such.csv"); err == nil {
		t.Fatalf("missing file accepted: %s", out)
	}
}

func TestDeliveryCommands(t *testing.T) {
	dsn := storetest.DSN(t, store.SQLite)
	addUsers(t, dsn, [2]string{"maker", "Prepare deliveries"}, [2]string{"starter", "Start deliveries"})
	importProfiles(t, dsn, []byte("email,first_name\nann@example.com,Ann\nbob@example.com,Bob\n"))
	// DKIM configured: every message the server sends is signed.
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	keyFile := filepath.Join(t.TempDir(), "dkim.pem")
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	s := startServer(t, dsn, "HERALD_DKIM_KEY_FILE="+keyFile, "HERALD_DKIM_DOMAIN=herald.example", "HERALD_DKIM_SELECTOR=s1")
	tok, err := run(t, dsn, "", "token", "create", "--login", "maker")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", "http://"+s.addr+"/api/v1/audiences", strings.NewReader(`{"name": "all", "filter": "id > 0"}`))
	req.Header.Set("Authorization", "Bearer "+strings.Fields(tok)[0])
	req.Header.Set("Content-Type", "application/json")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 201 {
		t.Fatalf("audience: %v %v", resp.StatusCode, err)
	}
	d := `{"name": "Hello", "channel": "email", "audience_id": 1, "content": {"from_name": "H", "from_address": "h@herald.example",
		"subject": "Hi {{.attributes.first_name}}", "html": "<p>Hi</p><a href=\"{{.unsubscribe_url}}\">Unsubscribe</a>"}}`
	out, err := run(t, dsn, d, "delivery", "create", "--login", "maker")
	if err != nil || !strings.Contains(out, `"state": "draft"`) {
		t.Fatalf("delivery create: %v\n%s", err, out)
	}
	if out, err := run(t, dsn, "", "delivery", "prepare", "1", "--login", "maker"); err != nil || !strings.Contains(out, `"state": "ready"`) {
		t.Fatalf("delivery prepare: %v\n%s", err, out)
	}
	if out, err := run(t, dsn, "", "delivery", "confirm", "1", "--login", "maker"); err == nil || !strings.Contains(out, `"Start deliveries"`) {
		t.Fatalf("confirm by maker: %v\n%s", err, out)
	}
	if out, err := run(t, dsn, "", "delivery", "confirm", "1", "--login", "starter"); err != nil || !strings.Contains(out, `"state": "sending"`) {
		t.Fatalf("confirm by starter: %v\n%s", err, out)
	}
	// The server's engine sends it in capture mode: both messages appear at /api/v1/captured,
	// personalised, and the delivery finishes.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, page := getJSON(t, "http://"+s.addr+"/api/v1/captured", strings.Fields(tok)[0])
		msgs, _ := page["messages"].([]any)
		if code == 200 && len(msgs) == 2 {
			id := fmt.Sprint(msgs[0].(map[string]any)["id"])
			req, _ := http.NewRequest("GET", "http://"+s.addr+"/api/v1/captured/"+id, nil)
			req.Header.Set("Authorization", "Bearer "+strings.Fields(tok)[0])
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(raw), "DKIM-Signature:") || !strings.Contains(string(raw), "d=herald.example") {
				t.Fatalf("captured message is not DKIM-signed:\n%.800s", raw)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("captured messages after 30 s: %d %v", code, page)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		code, d := getJSON(t, "http://"+s.addr+"/api/v1/deliveries/1", strings.Fields(tok)[0])
		if code == 200 && d["state"] == "finished" {
			if p := d["progress"].(map[string]any); p["done"] != 2.0 {
				t.Fatalf("progress of a finished delivery: %v", p)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivery not finished: %d %v", code, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.stop(t)
}

// TestSendingSettings: HERALD_DOMAIN_LIMITS, HERALD_DOMAIN_CONNS and HERALD_RETRY_BACKOFF reach the
// transport and the engine as written, and a mistake in any stops serve with the variable and the
// entry named.
func TestSendingSettings(t *testing.T) {
	cfg := config.Config{DomainLimits: "gmail.com=50,*=200", DomainConns: "gmail.com=10,*=20", RetryBackoff: "10m,1h"}
	limits, backoff, err := sendingSettings(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	if limits.Rates["gmail.com"] != 50 || limits.Default != 200 || limits.Conns["gmail.com"] != 10 || limits.DefaultConns != 20 ||
		!slices.Equal(backoff, []time.Duration{10 * time.Minute, time.Hour}) {
		t.Fatalf("got %+v and %v", limits, backoff)
	}
	if limits, backoff, err = sendingSettings(&config.Config{}); err != nil || limits.Rates != nil || limits.Default != 0 ||
		limits.Conns != nil || limits.DefaultConns != 0 || backoff != nil {
		t.Fatalf("unset: got %+v, %v, %v; want no caps and the engine's schedule", limits, backoff, err)
	}
	for _, c := range []struct{ env, want string }{
		{"HERALD_DOMAIN_LIMITS=gmail.com=fast", `HERALD_DOMAIN_LIMITS: entry 1 "gmail.com=fast"`},
		{"HERALD_DOMAIN_CONNS=*=none", `HERALD_DOMAIN_CONNS: entry 1 "*=none"`},
		{"HERALD_RETRY_BACKOFF=1h,10m", `HERALD_RETRY_BACKOFF: entry 2 "10m" is shorter than the wait before it`},
	} {
		cmd := exec.Command(heraldBin, "serve")
		cmd.Env = append(os.Environ(), "HERALD_DB="+filepath.Join(t.TempDir(), "h.db"), "HERALD_ADDR=127.0.0.1:0", c.env)
		b, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(b), c.want) {
			t.Errorf("%s: %v\n%s", c.env, err, b)
		}
	}
}

// TestServeStopsAtATakenPort: a second serve started by mistake, its address taken, stops
// before it touches the database: its engine must not claim a batch that its exit would leave
// in flight.
func TestServeStopsAtATakenPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dbPath := filepath.Join(t.TempDir(), "h.db")
	cmd := exec.Command(heraldBin, "serve")
	cmd.Env = append(os.Environ(), "HERALD_DB="+dbPath, "HERALD_ADDR="+ln.Addr().String())
	b, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "listen on "+ln.Addr().String()) {
		t.Fatalf("serve on a taken port: %v\n%s", err, b)
	}
	if _, err := os.Stat(dbPath); !os.IsNotExist(err) {
		t.Errorf("serve opened the database before finding its port taken (%v)", err)
	}
}

// addUsers adds each {login, role} with the password "password of LOGIN" and returns an API
// token for each login.
func addUsers(t *testing.T, dsn string, users ...[2]string) map[string]string {
	t.Helper()
	tokens := map[string]string{}
	for _, u := range users {
		if out, err := run(t, dsn, "password of "+u[0]+"\n", "user", "add", "--login", u[0], "--role", u[1], "--password-stdin"); err != nil {
			t.Fatalf("user add %s: %v\n%s", u[0], err, out)
		}
		out, err := run(t, dsn, "", "token", "create", "--login", u[0])
		if err != nil {
			t.Fatalf("token create %s: %v\n%s", u[0], err, out)
		}
		tokens[u[0]] = strings.Fields(out)[0]
	}
	return tokens
}

// importProfiles imports csv with `herald import profiles` and returns what the command printed.
func importProfiles(t *testing.T, dsn string, csv []byte) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "profiles.csv")
	if err := os.WriteFile(file, csv, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, dsn, "", "import", "profiles", file)
	if err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	return out
}

// launch creates an audience of every profile and a delivery of content to it, prepares the
// delivery as maker and confirms it as starter. It returns the delivery's id and the answer
// to the confirm.
func launch(t *testing.T, api, maker, starter, name string, content map[string]any) (string, map[string]any) {
	t.Helper()
	code, a := crashPost(t, api+"/audiences", maker, map[string]any{"name": "all of " + name, "filter": "id > 0"})
	if code != 201 {
		t.Fatalf("audience: %d %v", code, a)
	}
	code, d := crashPost(t, api+"/deliveries", maker, map[string]any{"name": name, "channel": "email", "audience_id": a["id"], "content": content})
	if code != 201 {
		t.Fatalf("delivery: %d %v", code, d)
	}
	id := fmt.Sprint(d["id"])
	if code, d := crashPost(t, api+"/deliveries/"+id+"/prepare", maker, nil); code != 200 || d["state"] != "ready" {
		t.Fatalf("prepare: %d %v", code, d)
	}
	code, d = crashPost(t, api+"/deliveries/"+id+"/confirm", starter, nil)
	if code != 200 {
		t.Fatalf("confirm: %d %v", code, d)
	}
	return id, d
}
