package tracking

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/content"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/store"
)

func init() {
	// The user agent is the one thing the tracking log keeps that may tell about a person.
	profile.RegisterEraser(`UPDATE tracking_events SET user_agent = '', why = '' WHERE log_id IN
		(SELECT id FROM sending_log WHERE profile_id = $1)`)
}

// SigningKeySetting is the settings row that holds the tracking signing key.
const SigningKeySetting = "tracking.signing_key.1"

// LoadOrCreateKey returns the tracking signing key kept in the settings table, creating a random
// 32-byte one the first time. Nodes starting together agree on one key: each inserts its own
// candidate with ON CONFLICT DO NOTHING and then every node reads the row that won.
func LoadOrCreateKey(ctx context.Context, db *store.DB) (Key, error) {
	secret := make([]byte, MinSecretLen)
	if _, err := rand.Read(secret); err != nil {
		return Key{}, fmt.Errorf("tracking: make a signing key: %w", err)
	}
	if _, err := db.Write.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`,
		SigningKeySetting, base64.StdEncoding.EncodeToString(secret)); err != nil {
		return Key{}, fmt.Errorf("tracking: store the signing key: %w", err)
	}
	var v string
	if err := db.Write.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = $1`, SigningKeySetting).Scan(&v); err != nil {
		return Key{}, fmt.Errorf("tracking: read the signing key: %w", err)
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil || len(b) < MinSecretLen {
		return Key{}, fmt.Errorf("tracking: the settings row %s does not hold a base64 key of at least %d bytes", SigningKeySetting, MinSecretLen)
	}
	return Key{ID: 1, Secret: b}, nil
}

// Retention is how long after its contact date a delivery's links are tracked (ACS: 6 months);
// later clicks go to the fallback URL.
const Retention = 183 * 24 * time.Hour

// modeNames are the tracked_links.mode values.
var modeNames = map[Mode]string{ModeTracked: "tracked", ModeNever: "never", ModeMirror: "mirror", ModeOptOut: "optout"}

// LinksOf returns a delivery's links as tracking sees them, from its compiled template and its
// tracking choices: http(s) links are tracked unless clicks are disabled or the link is listed
// as untracked, the mirror and opt-out links keep their modes, anything else is never tracked.
func LinksOf(tpl *content.Template) []Link {
	tr := tpl.Content().Tracking
	out := make([]Link, len(tpl.Links()))
	for i, l := range tpl.Links() {
		m := ModeNever
		switch l.Kind {
		case content.LinkHTTP:
			if !tr.DisableClicks && !slices.Contains(tr.UntrackedLinks, l.Index) {
				m = ModeTracked
			}
		case content.LinkMirror:
			m = ModeMirror
		case content.LinkUnsubscribe:
			m = ModeOptOut
		}
		out[i] = Link{URL: l.URL, Mode: m, Personalised: IsPersonalised(l.URL)}
	}
	return out
}

// SaveLinks writes a delivery's links to tracked_links inside tx, replacing any there. The
// sending engine calls it when a delivery starts, with LinksOf of the template it sends. A
// delivery has tens of links, so they are written one statement each.
func SaveLinks(ctx context.Context, tx *sql.Tx, deliveryID int64, links []Link) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM tracked_links WHERE delivery_id = $1`, deliveryID); err != nil {
		return fmt.Errorf("tracking: save the links of delivery %d: %w", deliveryID, err)
	}
	if len(links) == 0 {
		return nil
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO tracked_links (delivery_id, idx, url, mode) VALUES ($1, $2, $3, $4)`)
	if err != nil {
		return fmt.Errorf("tracking: save the links of delivery %d: %w", deliveryID, err)
	}
	defer stmt.Close()
	for i, l := range links {
		if _, err := stmt.ExecContext(ctx, deliveryID, i, l.URL, modeNames[l.Mode]); err != nil {
			return fmt.Errorf("tracking: save link %d of delivery %d: %w", i, deliveryID, err)
		}
	}
	return nil
}

// SQLTargets is the TargetSource over tracked_links and deliveries. A delivery with no
// tracked_links rows yet (sent before the engine saved them, or a proof) has its links derived
// from its content.
type SQLTargets struct {
	db        *store.DB
	retention time.Duration
}

var _ TargetSource = (*SQLTargets)(nil)

// NewSQLTargets returns the TargetSource over db; retention 0 means Retention.
func NewSQLTargets(db *store.DB, retention time.Duration) *SQLTargets {
	if retention <= 0 {
		retention = Retention
	}
	return &SQLTargets{db: db, retention: retention}
}

// Targets loads a delivery's links and the end of its tracking retention (its contact date, else
// its confirmation or creation, plus the retention).
func (s *SQLTargets) Targets(ctx context.Context, deliveryID int64) (TargetSet, error) {
	var start int64
	var raw string
	err := s.db.Read.QueryRowContext(ctx, `SELECT COALESCE(contact_at, confirmed_at, created_at), content
		FROM deliveries WHERE id = $1`, deliveryID).Scan(&start, &raw)
	if errors.Is(err, sql.ErrNoRows) {
		return TargetSet{}, ErrUnknownDelivery
	}
	if err != nil {
		return TargetSet{}, fmt.Errorf("read delivery %d: %w", deliveryID, err)
	}
	set := TargetSet{TrackUntil: clock.FromMillis(start).Add(s.retention)}
	rows, err := s.db.Read.QueryContext(ctx, `SELECT idx, url, mode FROM tracked_links WHERE delivery_id = $1 ORDER BY idx`, deliveryID)
	if err != nil {
		return TargetSet{}, fmt.Errorf("read the links of delivery %d: %w", deliveryID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var idx int
		var u, mode string
		if err := rows.Scan(&idx, &u, &mode); err != nil {
			return TargetSet{}, fmt.Errorf("read the links of delivery %d: %w", deliveryID, err)
		}
		if idx != len(set.Links) {
			return TargetSet{}, fmt.Errorf("the links of delivery %d skip index %d", deliveryID, len(set.Links))
		}
		m := ModeNever
		for k, v := range modeNames {
			if v == mode {
				m = k
			}
		}
		set.Links = append(set.Links, Link{URL: u, Mode: m, Personalised: IsPersonalised(u)})
	}
	if err := rows.Err(); err != nil {
		return TargetSet{}, fmt.Errorf("read the links of delivery %d: %w", deliveryID, err)
	}
	if len(set.Links) > 0 {
		return set, nil
	}
	var c content.Content
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return TargetSet{}, fmt.Errorf("delivery %d: content: %w", deliveryID, err)
	}
	tpl, err := content.Compile(c, content.Options{})
	if err != nil {
		return TargetSet{}, fmt.Errorf("delivery %d: compile its content for its links: %w", deliveryID, err)
	}
	set.Links = LinksOf(tpl)
	return set, nil
}
