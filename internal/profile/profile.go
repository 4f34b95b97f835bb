// Package profile holds the people Herald writes to: their addresses, time zone, locale,
// free attributes and per-channel opt-outs; creating and updating them one at a time or by
// streamed CSV import; and the privacy operations (export everything held, erase).
//
// A profile is matched by its external id when one is given, else by its email address,
// whose domain is compared without regard to case (Marie@Example.com and Marie@example.COM
// are one person; marie@example.com is another, as RFC 5321 allows local parts to differ by
// case). Single writes and imports share one merge rule: fields given overwrite, fields not
// given (or empty CSV cells) keep the stored value, and attributes merge key by key.
package profile

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
)

// Profile is one person.
type Profile struct {
	ID          int64          `json:"id"`
	Email       string         `json:"email,omitempty"`
	EmailDomain string         `json:"email_domain,omitempty"`
	Phone       string         `json:"phone,omitempty"`
	PushTokens  []string       `json:"push_tokens"`
	TimeZone    string         `json:"time_zone,omitempty"`
	Locale      string         `json:"locale,omitempty"`
	ExternalID  string         `json:"external_id,omitempty"`
	Attributes  map[string]any `json:"attributes"`
	OptOutEmail bool           `json:"opt_out_email"`
	OptOutSMS   bool           `json:"opt_out_sms"`
	OptOutPush  bool           `json:"opt_out_push"`
	CreatedAt   time.Time      `json:"created_at"`
	UpdatedAt   time.Time      `json:"updated_at"`
	// Erased is set when the profile's personal data was erased; only counts remain.
	Erased bool `json:"erased,omitempty"`

	emailKey string
}

// Input is a write to a profile. Nil fields are left as they are; an empty string clears a
// field; attributes merge key by key, and a null attribute value removes the key.
type Input struct {
	Email       *string        `json:"email"`
	Phone       *string        `json:"phone"`
	PushTokens  *[]string      `json:"push_tokens"`
	TimeZone    *string        `json:"time_zone"`
	Locale      *string        `json:"locale"`
	ExternalID  *string        `json:"external_id"`
	Attributes  map[string]any `json:"attributes"`
	OptOutEmail *bool          `json:"opt_out_email"`
	OptOutSMS   *bool          `json:"opt_out_sms"`
	OptOutPush  *bool          `json:"opt_out_push"`
}

// Service manages profiles.
type Service struct {
	db    *store.DB
	clock clock.Clock
	log   *slog.Logger
}

// NewService returns a Service over db.
func NewService(db *store.DB, clk clock.Clock, log *slog.Logger) *Service {
	return &Service{db: db, clock: clk, log: log}
}

// FieldError is one problem with one field of an input, named as the input names it.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// normalized is an Input after validation: every given field in stored form.
type normalized struct {
	in        Input
	email     *string // "" clears
	emailKey  string
	domain    string
	phone     *string
	tz        *string
	locale    *string
	extID     *string
	tokens    *[]string
	attrs     map[string]any
	optEmail  *bool
	optSMS    *bool
	optPush   *bool
	matchable bool   // has an email or external id to match on
	attrsJSON string // attrs as JSON when none is null: what a new profile stores
}

func hasNil(m map[string]any) bool {
	for _, v := range m {
		if v == nil {
			return true
		}
	}
	return false
}

// normalize validates in and returns its stored form, or every field error found.
func normalize(in Input) (normalized, []FieldError) {
	n := normalized{in: in, tokens: in.PushTokens, optEmail: in.OptOutEmail, optSMS: in.OptOutSMS, optPush: in.OptOutPush}
	var errs []FieldError
	bad := func(field string, err error) { errs = append(errs, FieldError{field, err.Error()}) }
	if in.Email != nil {
		if *in.Email == "" {
			n.email = in.Email
		} else if e, key, dom, err := NormalizeEmail(*in.Email); err != nil {
			bad("email", err)
		} else {
			n.email, n.emailKey, n.domain = &e, key, dom
		}
	}
	if in.Phone != nil {
		if *in.Phone == "" {
			n.phone = in.Phone
		} else if p, err := NormalizePhone(*in.Phone); err != nil {
			bad("phone", err)
		} else {
			n.phone = &p
		}
	}
	if in.TimeZone != nil {
		if *in.TimeZone != "" {
			if err := CheckTimeZone(*in.TimeZone); err != nil {
				bad("time_zone", err)
			}
		}
		n.tz = in.TimeZone
	}
	if in.Locale != nil {
		if *in.Locale == "" {
			n.locale = in.Locale
		} else if l, err := NormalizeLocale(*in.Locale); err != nil {
			bad("locale", err)
		} else {
			n.locale = &l
		}
	}
	if in.ExternalID != nil {
		if len(*in.ExternalID) > maxShortFieldLength {
			bad("external_id", fmt.Errorf("the external id is longer than %d characters", maxShortFieldLength))
		}
		n.extID = in.ExternalID
	}
	if in.PushTokens != nil {
		if len(*in.PushTokens) > MaxPushTokens {
			bad("push_tokens", fmt.Errorf("a profile holds at most %d push tokens", MaxPushTokens))
		}
		for _, t := range *in.PushTokens {
			if t == "" || len(t) > MaxPushTokenLength {
				bad("push_tokens", fmt.Errorf("push tokens must have 1 to %d characters", MaxPushTokenLength))
				break
			}
		}
	}
	if in.Attributes != nil {
		for k := range in.Attributes {
			if err := CheckAttributeKey(k); err != nil {
				bad("attributes."+k, err)
			}
		}
		if b, err := json.Marshal(in.Attributes); err != nil {
			bad("attributes", fmt.Errorf("attributes must be JSON values: %v", err))
		} else if len(b) > MaxAttributesBytes {
			bad("attributes", fmt.Errorf("attributes take %d bytes; the limit is %d", len(b), MaxAttributesBytes))
		} else if !hasNil(in.Attributes) {
			n.attrsJSON = string(b) // a new profile's attributes, encoded off the writer's path
		}
		n.attrs = in.Attributes
	}
	n.matchable = n.emailKey != "" || (n.extID != nil && *n.extID != "")
	return n, errs
}

// apply merges n into p (a copy) and reports whether anything changed.
func (n normalized) apply(p Profile) (Profile, bool) {
	q := p
	q.Attributes = maps.Clone(p.Attributes)
	if q.Attributes == nil {
		q.Attributes = map[string]any{}
	}
	if n.email != nil {
		q.Email, q.emailKey, q.EmailDomain = *n.email, n.emailKey, n.domain
	}
	if n.phone != nil {
		q.Phone = *n.phone
	}
	if n.tz != nil {
		q.TimeZone = *n.tz
	}
	if n.locale != nil {
		q.Locale = *n.locale
	}
	if n.extID != nil {
		q.ExternalID = *n.extID
	}
	if n.tokens != nil {
		q.PushTokens = append([]string{}, *n.tokens...)
	}
	for k, v := range n.attrs {
		if v == nil {
			delete(q.Attributes, k)
		} else {
			q.Attributes[k] = v
		}
	}
	if n.optEmail != nil {
		q.OptOutEmail = *n.optEmail
	}
	if n.optSMS != nil {
		q.OptOutSMS = *n.optSMS
	}
	if n.optPush != nil {
		q.OptOutPush = *n.optPush
	}
	if q.PushTokens == nil {
		q.PushTokens = []string{}
	}
	changed := q.Email != p.Email || q.Phone != p.Phone || q.TimeZone != p.TimeZone || q.Locale != p.Locale ||
		q.ExternalID != p.ExternalID || q.OptOutEmail != p.OptOutEmail || q.OptOutSMS != p.OptOutSMS ||
		q.OptOutPush != p.OptOutPush || !reflect.DeepEqual(q.PushTokens, nonNil(p.PushTokens)) ||
		!attrsEqual(q.Attributes, p.Attributes)
	return q, changed
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// attrsEqual compares attribute maps as JSON would, so 3 and 3.0 are equal.
func attrsEqual(a, b map[string]any) bool {
	if len(a) != len(b) {
		return false
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// Columns read for a profile, in scanProfile's order.
const profileColumns = `id, email, email_key, email_domain, phone, push_tokens, time_zone, locale, external_id,
	attributes, opt_out_email, opt_out_sms, opt_out_push, created_at, updated_at, erased_at`

func scanProfile(row interface{ Scan(...any) error }) (Profile, error) {
	var p Profile
	var email, key, domain, phone, tz, locale, ext sql.NullString
	var tokens, attrs string
	var created, updated int64
	var erased sql.NullInt64
	if err := row.Scan(&p.ID, &email, &key, &domain, &phone, &tokens, &tz, &locale, &ext, &attrs,
		&p.OptOutEmail, &p.OptOutSMS, &p.OptOutPush, &created, &updated, &erased); err != nil {
		return Profile{}, err
	}
	p.Email, p.emailKey, p.EmailDomain, p.Phone = email.String, key.String, domain.String, phone.String
	p.TimeZone, p.Locale, p.ExternalID = tz.String, locale.String, ext.String
	p.CreatedAt, p.UpdatedAt, p.Erased = clock.FromMillis(created), clock.FromMillis(updated), erased.Valid
	if err := json.Unmarshal([]byte(tokens), &p.PushTokens); err != nil {
		return Profile{}, fmt.Errorf("profile %d: push tokens: %w", p.ID, err)
	}
	dec := json.NewDecoder(strings.NewReader(attrs))
	dec.UseNumber()
	if err := dec.Decode(&p.Attributes); err != nil {
		return Profile{}, fmt.Errorf("profile %d: attributes: %w", p.ID, err)
	}
	if p.PushTokens == nil {
		p.PushTokens = []string{}
	}
	if p.Attributes == nil {
		p.Attributes = map[string]any{}
	}
	return p, nil
}

// querier is a pool or a transaction.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Get returns the profile with the given id.
func (s *Service) Get(ctx context.Context, id int64) (Profile, error) {
	return get(ctx, s.db.Read, id)
}

func get(ctx context.Context, q querier, id int64) (Profile, error) {
	return getSuffix(ctx, q, id, "")
}

// getForUpdate is get for a change in tx (store.ForUpdate): two changes to one profile at once
// are made one after the other, the second on the first's result.
func getForUpdate(ctx context.Context, eng store.Engine, tx *sql.Tx, id int64) (Profile, error) {
	return getSuffix(ctx, tx, id, store.ForUpdate(eng))
}

func getSuffix(ctx context.Context, q querier, id int64, suffix string) (Profile, error) {
	p, err := scanProfile(q.QueryRowContext(ctx, `SELECT `+profileColumns+` FROM profiles WHERE id = $1`+suffix, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Profile{}, problem.NotFoundf("there is no profile with id %d", id)
	}
	if err != nil {
		return Profile{}, fmt.Errorf("read profile %d: %w", id, err)
	}
	return p, nil
}

// nullable turns "" into NULL for optional text columns.
func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("profile: encode %T: %v", v, err)) // only maps and slices of JSON values reach here
	}
	return string(b)
}
