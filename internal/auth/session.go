package auth

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/problem"
)

// sessionRefresh is how stale a session's last use may be before a request extends it, so
// that most requests do not write.
const sessionRefresh = 5 * time.Minute

// Login checks a login and password from the client at ip and opens a session. It answers a
// TooMany problem while the login or the address is throttled, and one Unauthenticated
// problem for every other failure, so a caller cannot tell an unknown login from a wrong
// password. Only the throttle counters are written on failure.
func (s *Service) Login(ctx context.Context, login, password, ip string) (Principal, string, error) {
	login = strings.ToLower(strings.TrimSpace(login))
	keys := []string{"login:" + login, "addr:" + ip}
	limits := []int{MaxFailuresPerLogin, MaxFailuresPerAddr}
	now := s.clock.Now()
	// The attempt is counted before the password is checked, and given back if it succeeds:
	// checked first, attempts sent side by side would all pass the check before any failure
	// was counted, as many guesses as requests.
	if wait, err := s.reserve(ctx, keys, limits, now); err != nil {
		return Principal{}, "", err
	} else if wait > 0 {
		return Principal{}, "", &problem.Error{Kind: problem.TooMany, Code: "too_many_attempts", RetryAfter: wait,
			Message: fmt.Sprintf("too many failed logins; try again in %s", wait.Round(time.Second))}
	}
	var id int64
	var hash string
	var disabled bool
	err := s.db.Read.QueryRowContext(ctx, `SELECT id, password_hash, disabled FROM users WHERE login = $1`, login).Scan(&id, &hash, &disabled)
	if errors.Is(err, sql.ErrNoRows) {
		hash = dummyHash
	} else if err != nil {
		return Principal{}, "", fmt.Errorf("log in: %w", err)
	}
	ok, err := CheckPassword(hash, password)
	if err != nil {
		return Principal{}, "", fmt.Errorf("log in %q: %w", login, err)
	}
	if !ok || id == 0 || disabled {
		return Principal{}, "", unauthenticated("wrong login or password") // the attempt stays counted
	}
	token := randomToken(32)
	var p Principal
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM login_throttle WHERE key = $1`, keys[0]); err != nil {
			return fmt.Errorf("log in: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE login_throttle SET failures = failures - 1 WHERE key = $1 AND failures > 0`, keys[1]); err != nil {
			return fmt.Errorf("log in: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE user_id = $1 AND expires_at < $2`, id, now.UnixMilli()); err != nil {
			return fmt.Errorf("log in: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO sessions (token_hash, user_id, created_at, expires_at, last_seen_at, ip)
			VALUES ($1, $2, $3, $4, $3, $5)`, digest(token), id, now.UnixMilli(), now.Add(s.SessionTTL).UnixMilli(), ip); err != nil {
			return fmt.Errorf("open session: %w", err)
		}
		p, err = s.principal(ctx, tx, id, "session", ip)
		return err
	})
	if err != nil {
		return Principal{}, "", err
	}
	return p, token, nil
}

// errThrottled rolls back reserve's transaction when a key is at its limit.
var errThrottled = errors.New("throttled")

// reserve counts one login attempt against each key (the login, the address) in one
// transaction, unless a key already counts its limit of attempts in its current window; then
// it counts nothing and returns how long until that window ends. The count and the check are
// one statement per key, so attempts side by side take turns on the key's row.
func (s *Service) reserve(ctx context.Context, keys []string, limits []int, now time.Time) (time.Duration, error) {
	windowStart := now.Add(-ThrottleWindow).UnixMilli()
	var wait time.Duration
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		for i, k := range keys {
			var n int
			err := tx.QueryRowContext(ctx, `INSERT INTO login_throttle (key, failures, window_start) VALUES ($1, 1, $2)
				ON CONFLICT (key) DO UPDATE SET
				failures = CASE WHEN login_throttle.window_start < $3 THEN 1 ELSE login_throttle.failures + 1 END,
				window_start = CASE WHEN login_throttle.window_start < $3 THEN $2 ELSE login_throttle.window_start END
				WHERE login_throttle.window_start < $3 OR login_throttle.failures < $4
				RETURNING failures`, k, now.UnixMilli(), windowStart, limits[i]).Scan(&n)
			if errors.Is(err, sql.ErrNoRows) {
				var start int64
				if err := tx.QueryRowContext(ctx, `SELECT window_start FROM login_throttle WHERE key = $1`, k).Scan(&start); err != nil {
					return fmt.Errorf("read login throttle: %w", err)
				}
				wait = max(time.UnixMilli(start).Add(ThrottleWindow).Sub(now), time.Second)
				return errThrottled
			}
			if err != nil {
				return fmt.Errorf("count login attempt: %w", err)
			}
		}
		return nil
	})
	if errors.Is(err, errThrottled) {
		return wait, nil
	}
	return 0, err
}

// Session returns the principal of an open session, extending the session when it is used.
func (s *Service) Session(ctx context.Context, token, ip string) (Principal, error) {
	now := s.clock.Now()
	var userID, expires, lastSeen int64
	err := s.db.Read.QueryRowContext(ctx, `SELECT user_id, expires_at, last_seen_at FROM sessions WHERE token_hash = $1`,
		digest(token)).Scan(&userID, &expires, &lastSeen)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && expires <= now.UnixMilli()) {
		return Principal{}, unauthenticated("your session has ended; log in again")
	}
	if err != nil {
		return Principal{}, fmt.Errorf("read session: %w", err)
	}
	if now.Sub(time.UnixMilli(lastSeen)) > sessionRefresh {
		if err := s.db.InTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `UPDATE sessions SET last_seen_at = $1, expires_at = $2 WHERE token_hash = $3`,
				now.UnixMilli(), now.Add(s.SessionTTL).UnixMilli(), digest(token))
			return err
		}); err != nil {
			return Principal{}, fmt.Errorf("extend session: %w", err)
		}
	}
	return s.principal(ctx, s.db.Read, userID, "session", ip)
}

// Logout ends the session with the given token. Ending an unknown session is not an error.
func (s *Service) Logout(ctx context.Context, token string) error {
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE token_hash = $1`, digest(token))
		return err
	})
}

// TokenPrefix starts every API token, so that a leaked one is recognisable.
const TokenPrefix = "hrd_"

// Token describes an API token; the secret itself is shown only once, by CreateToken.
type Token struct {
	ID         int64      `json:"id"`
	UserID     int64      `json:"user_id"`
	Login      string     `json:"login"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

// CreateToken makes an API token for the user with the given login, valid for ttl (zero: until
// revoked), and returns its secret, which is not stored and cannot be shown again.
func (s *Service) CreateToken(ctx context.Context, actor audit.Actor, login, name string, ttl time.Duration) (string, Token, error) {
	if ttl < 0 {
		return "", Token{}, problem.Invalidf("expires", "a token's lifetime cannot be negative")
	}
	u, err := s.UserByLogin(ctx, login)
	if err != nil {
		return "", Token{}, err
	}
	secret := TokenPrefix + randomToken(32)
	now := s.clock.Now()
	t := Token{UserID: u.ID, Login: u.Login, Name: name, Prefix: secret[:len(TokenPrefix)+6], CreatedAt: now.UTC().Truncate(time.Millisecond)}
	var expires *int64
	if ttl > 0 {
		e := now.Add(ttl).UTC().Truncate(time.Millisecond)
		t.ExpiresAt = &e
		ms := e.UnixMilli()
		expires = &ms
	}
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `INSERT INTO api_tokens (user_id, name, prefix, token_hash, created_at, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`, u.ID, name, t.Prefix, digest(secret), now.UnixMilli(), expires).Scan(&t.ID)
		if err != nil {
			return fmt.Errorf("create token: %w", err)
		}
		return audit.Record(ctx, tx, now, actor, "token.create", "api_token", t.ID, nil, t)
	})
	if err != nil {
		return "", Token{}, err
	}
	return secret, t, nil
}

// RevokeToken revokes the API token with the given id; revoking twice is not an error.
func (s *Service) RevokeToken(ctx context.Context, actor audit.Actor, id int64) error {
	now := s.clock.Now()
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL`, now.UnixMilli(), id)
		if err != nil {
			return fmt.Errorf("revoke token %d: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			var exists int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM api_tokens WHERE id = $1`, id).Scan(&exists); err != nil {
				return fmt.Errorf("revoke token %d: %w", id, err)
			}
			if exists == 0 {
				return problem.NotFoundf("there is no API token with id %d", id)
			}
			return nil
		}
		return audit.Record(ctx, tx, now, actor, "token.revoke", "api_token", id, nil, map[string]any{"revoked_at": now.UTC()})
	})
}

// ListTokens returns the tokens of the user with the given login (all users when empty).
func (s *Service) ListTokens(ctx context.Context, login string) ([]Token, error) {
	q := `SELECT t.id, t.user_id, u.login, t.name, t.prefix, t.created_at, t.expires_at, t.revoked_at, t.last_used_at
		FROM api_tokens t JOIN users u ON u.id = t.user_id`
	var args []any
	if login != "" {
		q += ` WHERE u.login = $1`
		args = append(args, strings.ToLower(login))
	}
	rows, err := s.db.Read.QueryContext(ctx, q+` ORDER BY t.id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	defer rows.Close()
	out := []Token{}
	for rows.Next() {
		var t Token
		var created int64
		var expires, revoked, used sql.NullInt64
		if err := rows.Scan(&t.ID, &t.UserID, &t.Login, &t.Name, &t.Prefix, &created, &expires, &revoked, &used); err != nil {
			return nil, fmt.Errorf("list tokens: %w", err)
		}
		t.CreatedAt = time.UnixMilli(created).UTC()
		t.ExpiresAt, t.RevokedAt, t.LastUsedAt = optTime(expires), optTime(revoked), optTime(used)
		out = append(out, t)
	}
	return out, rows.Err()
}

func optTime(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := time.UnixMilli(v.Int64).UTC()
	return &t
}

// TokenPrincipal returns the principal of a valid API token.
func (s *Service) TokenPrincipal(ctx context.Context, secret, ip string) (Principal, error) {
	if !strings.HasPrefix(secret, TokenPrefix) {
		return Principal{}, unauthenticated("the API token is not valid: Herald tokens start with %q", TokenPrefix)
	}
	now := s.clock.Now()
	var id, userID int64
	var expires, revoked, used sql.NullInt64
	err := s.db.Read.QueryRowContext(ctx, `SELECT id, user_id, expires_at, revoked_at, last_used_at FROM api_tokens WHERE token_hash = $1`,
		digest(secret)).Scan(&id, &userID, &expires, &revoked, &used)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return Principal{}, unauthenticated("the API token is not valid")
	case err != nil:
		return Principal{}, fmt.Errorf("read token: %w", err)
	case revoked.Valid:
		return Principal{}, unauthenticated("the API token was revoked")
	case expires.Valid && expires.Int64 <= now.UnixMilli():
		return Principal{}, unauthenticated("the API token has expired")
	}
	if !used.Valid || now.Sub(time.UnixMilli(used.Int64)) > sessionRefresh {
		if err := s.db.InTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `UPDATE api_tokens SET last_used_at = $1 WHERE id = $2`, now.UnixMilli(), id)
			return err
		}); err != nil {
			return Principal{}, fmt.Errorf("record token use: %w", err)
		}
	}
	return s.principal(ctx, s.db.Read, userID, "token", ip)
}
