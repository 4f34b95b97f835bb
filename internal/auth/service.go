// Package auth holds Herald's users, groups and roles, password and session authentication,
// API tokens and login throttling.
//
// Every change to users or tokens is written to the audit log in the same transaction.
// Secrets (passwords, session cookies, API tokens) are never stored: passwords as argon2id
// hashes, session and token values as SHA-256 digests, so a copy of the database does not let
// anyone log in.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
)

// The built-in groups, created by the first migration.
const (
	GroupAdministrators = "Administrators"
	GroupStandardUsers  = "Standard users"
)

// Login throttling: at most this many failures per login, and per client address, within
// ThrottleWindow; then logins are refused until the window ends.
const (
	ThrottleWindow      = 15 * time.Minute
	MaxFailuresPerLogin = 5
	MaxFailuresPerAddr  = 20
)

// Service manages users, sessions and tokens.
type Service struct {
	db    *store.DB
	clock clock.Clock
	log   *slog.Logger
	// SessionTTL is how long a session lives without use.
	SessionTTL time.Duration
}

// NewService returns a Service over db.
func NewService(db *store.DB, clk clock.Clock, log *slog.Logger) *Service {
	return &Service{db: db, clock: clk, log: log, SessionTTL: 12 * time.Hour}
}

// User is a Herald user as shown to administrators; it never carries the password hash.
type User struct {
	ID          int64     `json:"id"`
	Login       string    `json:"login"`
	DisplayName string    `json:"display_name"`
	Disabled    bool      `json:"disabled"`
	Roles       Roles     `json:"roles"`        // effective: direct and from groups
	DirectRoles Roles     `json:"direct_roles"` // given to the user itself
	Groups      []string  `json:"groups"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// Principal is the authenticated caller of a request or command.
type Principal struct {
	UserID int64  `json:"id"`
	Login  string `json:"login"`
	Roles  Roles  `json:"roles"`
	// Via says how the caller authenticated: session, token or cli.
	Via string `json:"via"`
	// IP is the client address, for the audit log.
	IP string `json:"-"`
}

// Actor returns the principal as the audit log names it.
func (p Principal) Actor() audit.Actor {
	if p.UserID == 0 {
		return audit.Actor{Name: p.Login, IP: p.IP}
	}
	id := p.UserID
	return audit.Actor{ID: &id, Name: p.Login, IP: p.IP}
}

// Require returns a Forbidden problem naming role when p lacks it.
func (p Principal) Require(role Role) error {
	if p.Roles.Has(role) {
		return nil
	}
	return &problem.Error{Kind: problem.Forbidden, Code: "missing_role",
		Message: fmt.Sprintf("this action needs the role %q, which user %q does not have; ask an administrator to grant it", role, p.Login)}
}

// RequireAny returns a Forbidden problem naming the roles when p holds none of them.
func (p Principal) RequireAny(roles ...Role) error {
	for _, r := range roles {
		if p.Roles.Has(r) {
			return nil
		}
	}
	if len(roles) == 1 {
		return p.Require(roles[0])
	}
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = fmt.Sprintf("%q", r)
	}
	return &problem.Error{Kind: problem.Forbidden, Code: "missing_role",
		Message: fmt.Sprintf("this action needs one of the roles %s, none of which user %q has; ask an administrator to grant one", strings.Join(names, ", "), p.Login)}
}

// NewUser is what CreateUser needs.
type NewUser struct {
	Login       string   `json:"login"`
	DisplayName string   `json:"display_name"`
	Password    string   `json:"password"`
	Roles       []string `json:"roles"`
	Groups      []string `json:"groups"`
}

var loginPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._@-]{0,63}$`)

func normalizeLogin(login string) (string, error) {
	l := strings.ToLower(strings.TrimSpace(login))
	if !loginPattern.MatchString(l) {
		return "", problem.Invalidf("login", "login %q is not valid: use 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", login)
	}
	return l, nil
}

func checkPasswordRules(pw string) error {
	if len([]rune(pw)) < MinPasswordLength {
		return problem.Invalidf("password", "the password is too short: use at least %d characters", MinPasswordLength)
	}
	if len(pw) > 1024 {
		return problem.Invalidf("password", "the password is too long: use at most 1024 bytes")
	}
	return nil
}

func parseRoles(names []string) (Roles, error) {
	rs := Roles{}
	for _, n := range names {
		r, err := ParseRole(n)
		if err != nil {
			return nil, problem.Invalidf("roles", "%s", err.Error())
		}
		rs = append(rs, r)
	}
	return rs.normalize(), nil
}

// CreateUser adds a user with the given direct roles and groups.
func (s *Service) CreateUser(ctx context.Context, actor audit.Actor, nu NewUser) (User, error) {
	login, err := normalizeLogin(nu.Login)
	if err != nil {
		return User{}, err
	}
	if err := checkPasswordRules(nu.Password); err != nil {
		return User{}, err
	}
	roles, err := parseRoles(nu.Roles)
	if err != nil {
		return User{}, err
	}
	hash, err := HashPassword(nu.Password)
	if err != nil {
		return User{}, err
	}
	var u User
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		groupIDs, err := groupIDs(ctx, tx, nu.Groups)
		if err != nil {
			return err
		}
		now := s.clock.Now().UnixMilli()
		var id int64
		err = tx.QueryRowContext(ctx, `INSERT INTO users (login, display_name, password_hash, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $4) RETURNING id`, login, strings.TrimSpace(nu.DisplayName), hash, now).Scan(&id)
		if store.IsUniqueViolation(err) {
			return problem.Conflictf("login_taken", "a user with login %q already exists", login)
		}
		if err != nil {
			return fmt.Errorf("create user %s: %w", login, err)
		}
		if err := setRolesAndGroups(ctx, tx, id, roles, groupIDs); err != nil {
			return err
		}
		if u, err = getUser(ctx, tx, id); err != nil {
			return err
		}
		return audit.Record(ctx, tx, s.clock.Now(), actor, "user.create", "user", id, nil, u)
	})
	return u, err
}

func groupIDs(ctx context.Context, tx *sql.Tx, names []string) ([]int64, error) {
	ids := make([]int64, 0, len(names))
	for _, n := range names {
		var id int64
		err := tx.QueryRowContext(ctx, `SELECT id FROM groups WHERE lower(name) = lower($1)`, strings.TrimSpace(n)).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, problem.Invalidf("groups", "unknown group %q; the groups are %q and %q", n, GroupAdministrators, GroupStandardUsers)
		}
		if err != nil {
			return nil, fmt.Errorf("look up group %q: %w", n, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func setRolesAndGroups(ctx context.Context, tx *sql.Tx, userID int64, roles Roles, groups []int64) error {
	if roles != nil {
		if _, err := tx.ExecContext(ctx, `DELETE FROM user_roles WHERE user_id = $1`, userID); err != nil {
			return fmt.Errorf("set roles: %w", err)
		}
		for _, r := range roles {
			if _, err := tx.ExecContext(ctx, `INSERT INTO user_roles (user_id, role) VALUES ($1, $2)`, userID, string(r)); err != nil {
				return fmt.Errorf("set roles: %w", err)
			}
		}
	}
	if groups != nil {
		if _, err := tx.ExecContext(ctx, `DELETE FROM user_groups WHERE user_id = $1`, userID); err != nil {
			return fmt.Errorf("set groups: %w", err)
		}
		for _, g := range groups {
			if _, err := tx.ExecContext(ctx, `INSERT INTO user_groups (user_id, group_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, userID, g); err != nil {
				return fmt.Errorf("set groups: %w", err)
			}
		}
	}
	return nil
}

// querier is what reads need: a pool or a transaction.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

const userColumns = `id, login, display_name, disabled, created_at, updated_at`

func scanUser(row interface{ Scan(...any) error }) (User, error) {
	var u User
	var created, updated int64
	if err := row.Scan(&u.ID, &u.Login, &u.DisplayName, &u.Disabled, &created, &updated); err != nil {
		return User{}, err
	}
	u.CreatedAt, u.UpdatedAt = clock.FromMillis(created), clock.FromMillis(updated)
	return u, nil
}

func getUser(ctx context.Context, q querier, id int64) (User, error) {
	u, err := scanUser(q.QueryRowContext(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, problem.NotFoundf("there is no user with id %d", id)
	}
	if err != nil {
		return User{}, fmt.Errorf("read user %d: %w", id, err)
	}
	return u, fillRoles(ctx, q, &u)
}

func fillRoles(ctx context.Context, q querier, u *User) error {
	direct, err := queryStrings(ctx, q, `SELECT role FROM user_roles WHERE user_id = $1`, u.ID)
	if err != nil {
		return err
	}
	groupRoles, err := queryStrings(ctx, q, `SELECT gr.role FROM group_roles gr JOIN user_groups ug ON ug.group_id = gr.group_id WHERE ug.user_id = $1`, u.ID)
	if err != nil {
		return err
	}
	groups, err := queryStrings(ctx, q, `SELECT g.name FROM groups g JOIN user_groups ug ON ug.group_id = g.id WHERE ug.user_id = $1 ORDER BY g.name`, u.ID)
	if err != nil {
		return err
	}
	u.DirectRoles = toRoles(direct).normalize()
	u.Roles = toRoles(append(direct, groupRoles...)).normalize()
	u.Groups = groups
	return nil
}

func toRoles(names []string) Roles {
	rs := make(Roles, len(names))
	for i, n := range names {
		rs[i] = Role(n)
	}
	return rs
}

func queryStrings(ctx context.Context, q querier, query string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("read roles: %w", err)
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("read roles: %w", err)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// GetUser returns the user with the given id.
func (s *Service) GetUser(ctx context.Context, id int64) (User, error) {
	return getUser(ctx, s.db.Read, id)
}

// UserByLogin returns the user with the given login.
func (s *Service) UserByLogin(ctx context.Context, login string) (User, error) {
	var id int64
	err := s.db.Read.QueryRowContext(ctx, `SELECT id FROM users WHERE login = $1`, strings.ToLower(strings.TrimSpace(login))).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, problem.NotFoundf("there is no user with login %q", login)
	}
	if err != nil {
		return User{}, fmt.Errorf("read user %q: %w", login, err)
	}
	return getUser(ctx, s.db.Read, id)
}

// ListUsers returns every user, by login.
func (s *Service) ListUsers(ctx context.Context) ([]User, error) {
	rows, err := s.db.Read.QueryContext(ctx, `SELECT `+userColumns+` FROM users ORDER BY login`)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	var users []User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("list users: %w", err)
		}
		users = append(users, u)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	for i := range users {
		if err := fillRoles(ctx, s.db.Read, &users[i]); err != nil {
			return nil, err
		}
	}
	if users == nil {
		users = []User{}
	}
	return users, nil
}

// UserUpdate changes some of a user's settings; nil fields are left as they are.
type UserUpdate struct {
	DisplayName *string   `json:"display_name"`
	Password    *string   `json:"password"`
	Roles       *[]string `json:"roles"`
	Groups      *[]string `json:"groups"`
	Disabled    *bool     `json:"disabled"`
}

// UpdateUser applies up to the user with the given id. Disabling a user ends its sessions;
// its API tokens stop working while it is disabled.
func (s *Service) UpdateUser(ctx context.Context, actor audit.Actor, id int64, up UserUpdate) (User, error) {
	var roles Roles
	if up.Roles != nil {
		var err error
		if roles, err = parseRoles(*up.Roles); err != nil {
			return User{}, err
		}
	}
	var hash string
	if up.Password != nil {
		if err := checkPasswordRules(*up.Password); err != nil {
			return User{}, err
		}
		var err error
		if hash, err = HashPassword(*up.Password); err != nil {
			return User{}, err
		}
	}
	var after User
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		before, err := getUser(ctx, tx, id)
		if err != nil {
			return err
		}
		var groups []int64
		if up.Groups != nil {
			if groups, err = groupIDs(ctx, tx, *up.Groups); err != nil {
				return err
			}
		}
		now := s.clock.Now().UnixMilli()
		if up.DisplayName != nil {
			if _, err := tx.ExecContext(ctx, `UPDATE users SET display_name = $1 WHERE id = $2`, strings.TrimSpace(*up.DisplayName), id); err != nil {
				return fmt.Errorf("update user %d: %w", id, err)
			}
		}
		if hash != "" {
			if _, err := tx.ExecContext(ctx, `UPDATE users SET password_hash = $1 WHERE id = $2`, hash, id); err != nil {
				return fmt.Errorf("update user %d: %w", id, err)
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE user_id = $1`, id); err != nil {
				return fmt.Errorf("end sessions of user %d: %w", id, err)
			}
		}
		if up.Disabled != nil {
			if _, err := tx.ExecContext(ctx, `UPDATE users SET disabled = $1 WHERE id = $2`, *up.Disabled, id); err != nil {
				return fmt.Errorf("update user %d: %w", id, err)
			}
			if *up.Disabled {
				if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE user_id = $1`, id); err != nil {
					return fmt.Errorf("end sessions of user %d: %w", id, err)
				}
			}
		}
		if err := setRolesAndGroups(ctx, tx, id, roles, groups); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE users SET updated_at = $1 WHERE id = $2`, now, id); err != nil {
			return fmt.Errorf("update user %d: %w", id, err)
		}
		if after, err = getUser(ctx, tx, id); err != nil {
			return err
		}
		if err := s.keepAnAdministrator(ctx, tx); err != nil {
			return err
		}
		return audit.Record(ctx, tx, s.clock.Now(), actor, "user.update", "user", id, before, after)
	})
	return after, err
}

// administratorsLock is the PostgreSQL advisory lock keepAnAdministrator takes ("herald:a").
const administratorsLock = 0x6865_7261_6c64_3a61

// keepAnAdministrator refuses a change that leaves no enabled user with Administration, which
// would lock everyone out of user management. On PostgreSQL two such changes at once (each
// disabling one of the last two administrators) would each count the other's administrator
// still enabled, and both commit: the transactions take turns on an advisory lock held until
// they end, so that the second counts after the first's commit. SQLite's one writer already
// makes them take turns.
func (s *Service) keepAnAdministrator(ctx context.Context, tx *sql.Tx) error {
	if s.db.Engine == store.Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(administratorsLock)); err != nil {
			return fmt.Errorf("lock the administrators: %w", err)
		}
	}
	var n int
	err := tx.QueryRowContext(ctx, `SELECT count(*) FROM users u WHERE u.disabled = $1 AND (
		EXISTS (SELECT 1 FROM user_roles r WHERE r.user_id = u.id AND r.role = $2) OR
		EXISTS (SELECT 1 FROM user_groups ug JOIN group_roles gr ON gr.group_id = ug.group_id WHERE ug.user_id = u.id AND gr.role = $2))`,
		false, string(Administration)).Scan(&n)
	if err != nil {
		return fmt.Errorf("count administrators: %w", err)
	}
	if n == 0 {
		return problem.Conflictf("last_administrator", "this change would leave no enabled user with the %q role", Administration)
	}
	return nil
}

// CountUsers returns the number of users.
func (s *Service) CountUsers(ctx context.Context) (int, error) {
	var n int
	err := s.db.Read.QueryRowContext(ctx, `SELECT count(*) FROM users`).Scan(&n)
	return n, err
}

// EnsureAdmin creates the administrator `admin` in the Administrators group when there is no
// user at all. It uses password when given, else generates one; created reports whether a
// user was made, and generated holds the generated password (to be shown once).
func (s *Service) EnsureAdmin(ctx context.Context, password string) (created bool, generated string, err error) {
	n, err := s.CountUsers(ctx)
	if err != nil || n > 0 {
		return false, "", err
	}
	if password == "" {
		generated = randomToken(18)
		password = generated
	}
	_, err = s.CreateUser(ctx, audit.System, NewUser{Login: "admin", DisplayName: "Administrator", Password: password, Groups: []string{GroupAdministrators}})
	if p, ok := problem.As(err); ok && p.Code == "login_taken" {
		return false, "", nil // another node made it first
	}
	if err != nil {
		return false, "", fmt.Errorf("create the first administrator: %w", err)
	}
	return true, generated, nil
}

func randomToken(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func digest(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func (s *Service) principal(ctx context.Context, q querier, userID int64, via, ip string) (Principal, error) {
	u, err := getUser(ctx, q, userID)
	if err != nil {
		return Principal{}, err
	}
	if u.Disabled {
		return Principal{}, unauthenticated("user %q is disabled", u.Login)
	}
	return Principal{UserID: u.ID, Login: u.Login, Roles: u.Roles, Via: via, IP: ip}, nil
}

func unauthenticated(format string, args ...any) *problem.Error {
	return &problem.Error{Kind: problem.Unauthenticated, Code: "unauthenticated", Message: fmt.Sprintf(format, args...)}
}

// PrincipalFor returns the principal of the user with the given login, for the command line,
// which runs with the rights of the operator who can read the database.
func (s *Service) PrincipalFor(ctx context.Context, login string) (Principal, error) {
	u, err := s.UserByLogin(ctx, login)
	if err != nil {
		return Principal{}, err
	}
	return Principal{UserID: u.ID, Login: u.Login, Roles: u.Roles, Via: "cli"}, nil
}
