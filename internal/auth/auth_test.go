package auth_test

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

func TestRolesHas(t *testing.T) {
	cases := []struct {
		have auth.Roles
		want auth.Role
		ok   bool
	}{
		{auth.Roles{auth.Administration}, auth.StartDeliveries, true},
		{auth.Roles{auth.Administration}, auth.Export, true},
		{auth.Roles{auth.StartDeliveries}, auth.PrepareDeliveries, true},
		{auth.Roles{auth.PrepareDeliveries}, auth.StartDeliveries, false},
		{auth.Roles{auth.Workflow}, auth.StartDeliveries, false},
		{auth.Roles{auth.ApproveDeliveries}, auth.PrepareDeliveries, false},
		{auth.Roles{auth.GenericImport}, auth.GenericImport, true},
		{auth.Roles{}, auth.Export, false},
	}
	for _, c := range cases {
		if got := c.have.Has(c.want); got != c.ok {
			t.Errorf("%v.Has(%q) = %v, want %v", c.have, c.want, got, c.ok)
		}
	}
}

func TestParseRole(t *testing.T) {
	r, err := auth.ParseRole("start DELIVERIES")
	if err != nil || r != auth.StartDeliveries {
		t.Fatalf("ParseRole = %q, %v", r, err)
	}
	if _, err := auth.ParseRole("Send"); err == nil {
		t.Fatal("unknown role accepted")
	}
}

func TestPasswordHash(t *testing.T) {
	h, err := auth.HashPassword("correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := auth.CheckPassword(h, "correct horse battery"); !ok || err != nil {
		t.Fatalf("right password refused: %v %v", ok, err)
	}
	if ok, _ := auth.CheckPassword(h, "correct horse batterx"); ok {
		t.Fatal("wrong password accepted")
	}
	h2, _ := auth.HashPassword("correct horse battery")
	if h == h2 {
		t.Fatal("two hashes of one password are equal: salt is not random")
	}
	if _, err := auth.CheckPassword("$2a$10$bcrypt", "x"); err == nil {
		t.Fatal("a non-argon2id hash was accepted")
	}
}

func newService(t *testing.T, db *store.DB) (*auth.Service, *clock.Fake) {
	clk := clock.NewFake(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC))
	return auth.NewService(db, clk, slog.New(slog.NewTextHandler(io.Discard, nil))), clk
}

func TestUsersSessionsTokens(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, clk := newService(t, db)
		created, pw, err := s.EnsureAdmin(ctx, "")
		if err != nil || !created || len(pw) < 20 {
			t.Fatalf("EnsureAdmin = %v, %q, %v", created, pw, err)
		}
		if created, _, _ := s.EnsureAdmin(ctx, ""); created {
			t.Fatal("EnsureAdmin created a second administrator")
		}
		admin, err := s.UserByLogin(ctx, "admin")
		if err != nil || !admin.Roles.Has(auth.Administration) {
			t.Fatalf("admin = %+v, %v", admin, err)
		}

		u, err := s.CreateUser(ctx, audit.System, auth.NewUser{Login: "Marie", Password: "a long enough pw", Roles: []string{"Prepare deliveries"}, Groups: nil})
		if err != nil {
			t.Fatal(err)
		}
		if u.Login != "marie" || !u.Roles.Has(auth.PrepareDeliveries) || u.Roles.Has(auth.StartDeliveries) {
			t.Fatalf("created user = %+v", u)
		}
		if _, err := s.CreateUser(ctx, audit.System, auth.NewUser{Login: "marie", Password: "another long pw"}); problemKind(err) != problem.Conflict {
			t.Fatalf("duplicate login: %v", err)
		}
		if _, err := s.CreateUser(ctx, audit.System, auth.NewUser{Login: "x", Password: "short"}); problemKind(err) != problem.Invalid {
			t.Fatalf("short password: %v", err)
		}
		if _, err := s.CreateUser(ctx, audit.System, auth.NewUser{Login: "y", Password: "long enough pw", Roles: []string{"Send"}}); problemKind(err) != problem.Invalid {
			t.Fatalf("unknown role: %v", err)
		}

		// Sessions.
		if _, _, err := s.Login(ctx, "marie", "wrong password!", "10.0.0.1"); problemKind(err) != problem.Unauthenticated {
			t.Fatalf("wrong password: %v", err)
		}
		p, tok, err := s.Login(ctx, "MARIE", "a long enough pw", "10.0.0.1")
		if err != nil || p.Login != "marie" {
			t.Fatalf("login: %+v %v", p, err)
		}
		if got, err := s.Session(ctx, tok, "10.0.0.1"); err != nil || got.UserID != u.ID {
			t.Fatalf("session: %+v %v", got, err)
		}
		clk.Advance(13 * time.Hour)
		if _, err := s.Session(ctx, tok, ""); problemKind(err) != problem.Unauthenticated {
			t.Fatalf("expired session accepted: %v", err)
		}

		// Tokens.
		secret, info, err := s.CreateToken(ctx, audit.System, "marie", "ci", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := s.TokenPrincipal(ctx, secret, ""); err != nil || got.UserID != u.ID {
			t.Fatalf("token: %+v %v", got, err)
		}
		if _, err := s.TokenPrincipal(ctx, secret+"x", ""); problemKind(err) != problem.Unauthenticated {
			t.Fatalf("altered token accepted: %v", err)
		}
		clk.Advance(2 * time.Hour)
		if _, err := s.TokenPrincipal(ctx, secret, ""); problemKind(err) != problem.Unauthenticated {
			t.Fatalf("expired token accepted: %v", err)
		}
		secret2, info2, err := s.CreateToken(ctx, audit.System, "marie", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeToken(ctx, audit.System, info2.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.TokenPrincipal(ctx, secret2, ""); problemKind(err) != problem.Unauthenticated {
			t.Fatalf("revoked token accepted: %v", err)
		}
		if err := s.RevokeToken(ctx, audit.System, 9999); problemKind(err) != problem.NotFound {
			t.Fatalf("revoking a missing token: %v", err)
		}
		_ = info

		// Disabling ends sessions and stops tokens.
		_, tok, err = s.Login(ctx, "marie", "a long enough pw", "")
		if err != nil {
			t.Fatal(err)
		}
		secret3, _, _ := s.CreateToken(ctx, audit.System, "marie", "", 0)
		yes := true
		if _, err := s.UpdateUser(ctx, audit.System, u.ID, auth.UserUpdate{Disabled: &yes}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Session(ctx, tok, ""); problemKind(err) != problem.Unauthenticated {
			t.Fatalf("session of disabled user accepted: %v", err)
		}
		if _, err := s.TokenPrincipal(ctx, secret3, ""); problemKind(err) != problem.Unauthenticated {
			t.Fatalf("token of disabled user accepted: %v", err)
		}
		if _, _, err := s.Login(ctx, "marie", "a long enough pw", ""); problemKind(err) != problem.Unauthenticated {
			t.Fatalf("disabled user logged in: %v", err)
		}

		// The last administrator cannot be disabled.
		if _, err := s.UpdateUser(ctx, audit.System, admin.ID, auth.UserUpdate{Disabled: &yes}); problemKind(err) != problem.Conflict {
			t.Fatalf("disabling the last administrator: %v", err)
		}
		entries, err := audit.List(ctx, db, audit.Query{ObjectType: "user", ObjectID: "2"})
		if err != nil || len(entries) != 2 || entries[0].Action != "user.update" || entries[1].Action != "user.create" {
			t.Fatalf("audit entries for user 2 = %+v, %v", entries, err)
		}
		if len(entries[0].Before) == 0 || len(entries[0].After) == 0 {
			t.Fatalf("update entry lacks before/after: %+v", entries[0])
		}
	})
}

func TestLoginThrottle(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, clk := newService(t, db)
		if _, err := s.CreateUser(ctx, audit.System, auth.NewUser{Login: "bob", Password: "bob's long password"}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < auth.MaxFailuresPerLogin; i++ {
			if _, _, err := s.Login(ctx, "bob", "nope nope nope", "192.0.2.1"); problemKind(err) != problem.Unauthenticated {
				t.Fatalf("attempt %d: %v", i, err)
			}
		}
		_, _, err := s.Login(ctx, "bob", "bob's long password", "192.0.2.2")
		p, _ := problem.As(err)
		if p == nil || p.Kind != problem.TooMany || p.RetryAfter <= 0 {
			t.Fatalf("right password during throttle: %v", err)
		}
		clk.Advance(auth.ThrottleWindow + time.Second)
		if _, _, err := s.Login(ctx, "bob", "bob's long password", "192.0.2.2"); err != nil {
			t.Fatalf("login after the window: %v", err)
		}
		// Per address: many logins from one address are throttled too.
		for i := 0; i < auth.MaxFailuresPerAddr; i++ {
			_, _, _ = s.Login(ctx, "ghost"+string(rune('a'+i)), "whatever pw", "198.51.100.7")
		}
		if _, _, err := s.Login(ctx, "bob", "bob's long password", "198.51.100.7"); problemKind(err) != problem.TooMany {
			t.Fatalf("address not throttled: %v", err)
		}
	})
}

func problemKind(err error) problem.Kind {
	if p, ok := problem.As(err); ok {
		return p.Kind
	}
	return 0
}

// TestLoginThrottleHoldsForAttemptsSideBySide: wrong passwords sent side by side, more of them
// than the limit, get exactly the limit of password checks; the others are refused as too many.
// (Checked before counting, they all passed the throttle before any failure was counted.)
func TestLoginThrottleHoldsForAttemptsSideBySide(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s, _ := newService(t, db)
		if _, err := s.CreateUser(ctx, audit.System, auth.NewUser{Login: "bob", Password: "bob's long password"}); err != nil {
			t.Fatal(err)
		}
		const n = 4 * auth.MaxFailuresPerLogin
		kinds := make(chan problem.Kind, n)
		start := make(chan struct{})
		for i := range n {
			go func() {
				<-start
				_, _, err := s.Login(ctx, "bob", "a wrong guess "+string(rune('a'+i)), "192.0.2."+strconv.Itoa(i+1))
				kinds <- problemKind(err)
			}()
		}
		close(start)
		checked := 0
		for range n {
			switch k := <-kinds; k {
			case problem.Unauthenticated:
				checked++
			case problem.TooMany:
			default:
				t.Errorf("a wrong password answered with kind %v", k)
			}
		}
		if checked != auth.MaxFailuresPerLogin {
			t.Fatalf("%d of %d wrong passwords sent at once were checked, want %d", checked, n, auth.MaxFailuresPerLogin)
		}
		// A success gives back the attempt its address counted: logging in again and again from
		// one address never reaches the address's limit.
		if _, err := s.CreateUser(ctx, audit.System, auth.NewUser{Login: "carol", Password: "carol's long password"}); err != nil {
			t.Fatal(err)
		}
		for i := range auth.MaxFailuresPerAddr + 1 {
			if _, _, err := s.Login(ctx, "carol", "carol's long password", "203.0.113.9"); err != nil {
				t.Fatalf("login %d from one address with the right password: %v", i+1, err)
			}
		}
	})
}
