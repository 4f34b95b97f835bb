package sending

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/bounce"
	"github.com/heraldhq/herald/internal/channel/email"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/webhook"
)

// BounceMatchWindow is how far back a bounce that names neither a return path nor a Message-ID
// of Herald's is matched by its recipient address: to the most recent row sent to that address
// within it. Remote servers give up on a message after about five days, so a week covers every
// genuine late bounce.
const BounceMatchWindow = 7 * 24 * time.Hour

// ErrBounceTooEarly is returned, wrapped, when a bounce names a row whose send is still being
// written back: the caller answers "try again later" (SMTP 451, HTTP 5xx) and the retried
// bounce finds the row settled.
var ErrBounceTooEarly = errors.New("the bounced message's outcome is not written yet")

// BounceConfig configures a BounceApplier. DB and Quarantine are required.
type BounceConfig struct {
	DB         *store.DB
	Quarantine *quarantine.Service
	// ReturnPath reads the per-recipient return paths and Message-IDs the engine sends with;
	// nil matches bounces by recipient address only.
	ReturnPath *ReturnPath
	// OptOut, when set, records an opt-out for a sending-log row: mail to a message's
	// List-Unsubscribe address (u+<row>.<tag>@domain) is one, whatever it says. It is the
	// tracking writer's opt-out, so the profile, the counters and the webhooks move as for a
	// one-click unsubscribe.
	OptOut func(ctx context.Context, logID, deliveryID int64) error
	Clock  clock.Clock
	Logger *slog.Logger
}

// BounceApplier applies asynchronous bounces and complaints — DSNs and ARF reports from the
// inbound SMTP listener, provider webhooks — to the sending log (DESIGN.md §5). It implements
// bounce.Receiver.
//
// Each result of a report is tied to a sending-log row: by the envelope recipient (Herald's
// signed per-recipient return path b+<id>.<tag>@domain), else by the original Message-ID
// (which the engine makes from the row id and the same key, see ReturnPath.MessageID), else by
// the recipient address, to the most recent row sent to it within BounceMatchWindow. Then, in
// one transaction per report:
//
//   - a hard bounce fails the row (failure type hard, the reason, the reply and enhanced codes)
//     and puts the address in quarantine; a soft one (a full mailbox after acceptance) fails it
//     soft and counts a soft error, a full mailbox marked as such;
//   - a complaint puts the address on the denylist and leaves the row delivered;
//   - auto-replies, delivery reports and "delayed" notices change nothing.
//
// The delivery's live counters move (delivered → hard or soft) and a bounced or complained
// webhook event is queued only when the row or the address actually changed, so the same
// bounce received twice changes nothing. As for synchronous answers (Engine.decide), only
// reasons about the address itself (unknown user, full mailbox, unknown host...) touch the
// quarantine; a bounce about Herald's side (blocked IP, spam filter, refused sender) fails
// the row without blaming the address.
//
// A report tied to no row is logged and accepted: refusing it would only make the remote
// server retry it for days. A report whose return path carries a forged tag is dropped.
//
// Limits: the recipient-address fallback trusts the report: anyone who can send mail to the
// bounce domain can fail the latest row of an address sent to within the window. Reports that
// carry a signed return path or Message-ID are not forgeable this way.
type BounceApplier struct {
	db     *store.DB
	quar   *quarantine.Service
	rp     *ReturnPath
	optOut func(ctx context.Context, logID, deliveryID int64) error
	clock  clock.Clock
	log    *slog.Logger
}

var _ bounce.Receiver = (*BounceApplier)(nil)

// NewBounceApplier returns a BounceApplier for cfg.
func NewBounceApplier(cfg BounceConfig) (*BounceApplier, error) {
	if cfg.DB == nil || cfg.Quarantine == nil {
		return nil, errors.New("sending: BounceConfig needs DB and Quarantine")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &BounceApplier{db: cfg.DB, quar: cfg.Quarantine, rp: cfg.ReturnPath, optOut: cfg.OptOut, clock: cfg.Clock, log: cfg.Logger}, nil
}

// MessageID returns the Message-ID (without angle brackets) of sending-log row logID, at
// domain: m+<id>.<tag>@domain, tagged like the return path, so that a complaint or a bounce
// that quotes only the original message's headers still names its row. A retry of the row
// sends the same Message-ID, as it is the same message.
func (p *ReturnPath) MessageID(logID int64, domain string) string {
	return p.Addresses(logID, domain).MessageID
}

// ParseMessageID reads a Message-ID made by MessageID, with or without angle brackets, whatever
// its domain (the tag authenticates it). It refuses other Message-IDs and forged tags.
func (p *ReturnPath) ParseMessageID(id string) (logID int64, ok bool) {
	local, _, found := strings.Cut(strings.Trim(strings.TrimSpace(id), "<>"), "@")
	if !found || len(local) < 3 || local[:2] != "m+" {
		return 0, false
	}
	num, tag, found := strings.Cut(local[2:], ".")
	if !found {
		return 0, false
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || !p.validTag('m', n, tag) {
		return 0, false
	}
	return n, true
}

// looksLikeReturnPath reports whether addr has the shape of a bounce return path at p's domain,
// signed or not: one that fails Parse was forged or damaged.
func (p *ReturnPath) looksLikeReturnPath(addr string) bool {
	local, dom, found := strings.Cut(addr, "@")
	return found && strings.EqualFold(dom, p.Domain) && len(local) > 2 && (local[0]|0x20) == 'b' && local[1] == '+'
}

// bounceRow is the part of a sending-log row a bounce reads.
type bounceRow struct {
	id, deliveryID, profileID int64
	address, status, ftype    string
}

// action is what one result of a report asks for.
type action uint8

const (
	actNone action = iota
	actFailure
	actComplaint
)

// actionOf classifies a result: a failure (hard or soft), a complaint, or nothing.
func actionOf(kind bounce.Kind, r bounce.Result) action {
	if kind == bounce.KindFeedback || r.Reason == bounce.ReasonFeedback {
		return actComplaint
	}
	if kind != bounce.KindDSN || r.Hard == nil || r.Reason == bounce.ReasonVacation || r.Reason == bounce.ReasonDelivered {
		return actNone
	}
	switch strings.ToLower(r.Action) {
	case "delayed", "delivered", "relayed", "expanded":
		return actNone // not (or not yet) a failure
	}
	return actFailure
}

// Receive applies rep, received for the envelope recipients envelopeTo, in one transaction.
// It fails only when the database does, or with ErrBounceTooEarly, so that the sender of the
// report keeps it and tries again.
func (a *BounceApplier) Receive(ctx context.Context, envelopeTo []string, rep *bounce.Report) error {
	if handled, err := a.unsubscribe(ctx, envelopeTo); handled || err != nil {
		return err
	}
	type todo struct {
		r   bounce.Result
		act action
	}
	var work []todo
	for _, r := range rep.Results {
		if act := actionOf(rep.Kind, r); act != actNone {
			work = append(work, todo{r, act})
		}
	}
	if len(work) == 0 {
		a.log.Debug("report ignored: no failure and no complaint in it", "kind", rep.Kind, "to", envelopeTo)
		return nil
	}
	fixed, forged := a.identify(envelopeTo, rep)
	if forged != "" {
		a.log.Warn("bounce dropped: its return path has a forged or damaged tag", "to", forged)
		return nil
	}
	now := a.clock.Now()
	return a.db.InTx(ctx, func(tx *sql.Tx) error {
		var events []webhook.Event
		moves := map[int64]*stats.Counters{}
		done := map[int64]bool{}
		var row *bounceRow
		if fixed != 0 {
			var err error
			row, err = a.loadRow(ctx, tx, fixed)
			if errors.Is(err, store.ErrNotFound) {
				a.log.Info("bounce names a sending-log row that no longer exists; accepted and dropped", "log_id", fixed)
				return nil
			}
			if err != nil {
				return err
			}
			// A message has one recipient: prefer the results about it (a report may also
			// list others, e.g. a forwarding target), else take the first.
			var mine []todo
			for _, w := range work {
				if email.SameAddress(w.r.Recipient, row.address) {
					mine = append(mine, w)
				}
			}
			if len(mine) == 0 {
				mine = work[:1]
			}
			work = mine[:1]
		}
		for _, w := range work {
			r := row
			if r == nil {
				var err error
				r, err = a.findByRecipient(ctx, tx, w.r.Recipient, now)
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
				if err != nil {
					a.log.Info("bounce matches no message sent in the last week; accepted and dropped",
						"recipient", w.r.Recipient, "kind", rep.Kind, "reason", w.r.Reason, "to", envelopeTo)
					continue
				}
			}
			if done[r.id] {
				continue
			}
			done[r.id] = true
			var ev *webhook.Event
			var err error
			if w.act == actComplaint {
				ev, err = a.complaint(ctx, tx, r, w.r, now)
			} else {
				var from, to stats.Outcome
				ev, from, to, err = a.failure(ctx, tx, r, w.r, now)
				if from != to {
					if moves[r.deliveryID] == nil {
						moves[r.deliveryID] = &stats.Counters{}
					}
					moves[r.deliveryID].Move(from, to, 1)
				}
			}
			if err != nil {
				return err
			}
			if ev != nil {
				events = append(events, *ev)
			}
		}
		ids := make([]int64, 0, len(moves))
		for id := range moves {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			if err := stats.Apply(ctx, tx, id, now, *moves[id]); err != nil {
				return err
			}
		}
		if len(events) == 0 {
			return nil
		}
		return webhook.Emit(ctx, tx, a.db.Engine, now, events)
	})
}

// identify returns the row the report names by its envelope return path or its original
// Message-ID (0 when neither names one), or, when an envelope address has the return-path
// shape but a bad tag, that address.
func (a *BounceApplier) identify(envelopeTo []string, rep *bounce.Report) (logID int64, forged string) {
	if a.rp == nil {
		return 0, ""
	}
	for _, addr := range append(slices.Clone(envelopeTo), rep.EnvelopeAddresses()...) {
		if id, kind, ok := a.rp.Parse(addr); ok && kind == 'b' {
			return id, ""
		}
		if a.rp.looksLikeReturnPath(addr) && forged == "" {
			forged = addr
		}
	}
	if forged != "" {
		return 0, forged
	}
	if id, ok := a.rp.ParseMessageID(rep.OriginalMessageID); ok {
		return id, ""
	}
	return 0, ""
}

// bounceRowColumns are the columns scanBounceRow reads, from sending_log sl. A row in flight
// reads 'sending' on both engines.
func bounceRowColumns(eng store.Engine) string {
	return `sl.id, sl.delivery_id, sl.profile_id, sl.address, ` + statusSQL(eng, "sl", "sl.delivery_id") + `, COALESCE(sl.failure_type, '')`
}

// scanBounceRow reads one row; store.ErrNotFound when there is none.
func scanBounceRow(row *sql.Row) (*bounceRow, error) {
	var r bounceRow
	err := row.Scan(&r.id, &r.deliveryID, &r.profileID, &r.address, &r.status, &r.ftype)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read the bounced sending-log row: %w", err)
	}
	return &r, nil
}

// loadRow returns row id; store.ErrNotFound when there is none.
func (a *BounceApplier) loadRow(ctx context.Context, tx *sql.Tx, id int64) (*bounceRow, error) {
	return scanBounceRow(tx.QueryRowContext(ctx, `SELECT `+bounceRowColumns(a.db.Engine)+` FROM sending_log sl WHERE sl.id = $1`, id))
}

// findByRecipient returns the most recent email row sent to recipient within
// BounceMatchWindow; store.ErrNotFound when there is none. It goes through the profile's email key (indexed) and the
// sending log's profile index.
func (a *BounceApplier) findByRecipient(ctx context.Context, tx *sql.Tx, recipient string, now time.Time) (*bounceRow, error) {
	key, err := quarantine.NormalizeAddress(quarantine.Email, recipient)
	if err != nil {
		return nil, store.ErrNotFound
	}
	// Reports name an internationalised domain in the ASCII form it was sent to; the profile
	// may have it in Unicode.
	ukey := key
	if u := email.UnicodeAddress(recipient); u != recipient {
		if k, err := quarantine.NormalizeAddress(quarantine.Email, u); err == nil {
			ukey = k
		}
	}
	return scanBounceRow(tx.QueryRowContext(ctx, `SELECT `+bounceRowColumns(a.db.Engine)+` FROM sending_log sl
		JOIN deliveries d ON d.id = sl.delivery_id AND d.channel = 'email'
		WHERE sl.profile_id IN (SELECT id FROM profiles WHERE email_key IN ($1, $3)) AND sl.sent_at >= $2
		ORDER BY sl.sent_at DESC, sl.id DESC LIMIT 1`, key, now.Add(-BounceMatchWindow).UnixMilli(), ukey))
}

// failure applies a hard or soft bounce to r. It returns the event to emit (nil when nothing
// changed) and the row's outcome before and after.
func (a *BounceApplier) failure(ctx context.Context, tx *sql.Tx, r *bounceRow, res bounce.Result, now time.Time) (*webhook.Event, stats.Outcome, stats.Outcome, error) {
	old := stats.OutcomeOf(r.status, r.ftype)
	if r.status == "sending" {
		return nil, old, old, fmt.Errorf("%w: row %d is in flight", ErrBounceTooEarly, r.id)
	}
	typ, to := "soft", stats.OutcomeSoft
	if *res.Hard {
		typ, to = "hard", stats.OutcomeHard
	}
	// Only a delivered row fails, and a soft failure may become hard; anything else (already
	// failed the same way or harder, never sent, cancelled) stays as it is.
	if !(old == stats.OutcomeDelivered || (old == stats.OutcomeSoft && to == stats.OutcomeHard)) {
		a.log.Debug("bounce changes nothing", "log_id", r.id, "status", r.status, "failure_type", r.ftype, "bounce", typ)
		return nil, old, old, nil
	}
	text := string(res.Reason)
	if res.Diagnostic != "" {
		text += ": " + res.Diagnostic
	}
	text = cut(text)
	var code, enhanced any
	if res.ReplyCode != 0 {
		code = res.ReplyCode
	}
	if res.Status != "" {
		enhanced = res.Status
	}
	// The status and type the row was read with are checked again, so that two copies of a
	// bounce applied at once change it once.
	n, err := execCount(tx.ExecContext(ctx, `UPDATE sending_log SET status = 'failed', failure_type = $2, failure_reason = $3,
		smtp_code = $4, enhanced_code = $5 WHERE id = $1 AND status = $6 AND COALESCE(failure_type, '') = $7`,
		r.id, typ, text, code, enhanced, r.status, r.ftype))
	if err != nil {
		return nil, old, old, fmt.Errorf("fail sending-log row %d after a bounce: %w", r.id, err)
	}
	if n == 0 {
		return nil, old, old, fmt.Errorf("%w: row %d changed meanwhile", ErrBounceTooEarly, r.id)
	}
	if slices.Contains(addressReasons, res.Reason) && !senderStatus(res.Status) {
		if *res.Hard {
			_, err = a.quar.RecordHard(ctx, tx, quarantine.Email, r.address, text, now)
		} else {
			_, err = a.quar.RecordSoft(ctx, tx, quarantine.Email, r.address, text, res.Reason == bounce.ReasonMailboxFull, now)
		}
		if p, ok := problem.As(err); err != nil && (!ok || p.Kind != problem.Invalid) {
			return nil, old, old, err
		}
	}
	data := map[string]any{"failure_type": typ, "reason": string(res.Reason), "diagnostic": res.Diagnostic, "async": true}
	if res.Status != "" {
		data["status"] = res.Status
	}
	if res.ReplyCode != 0 {
		data["code"] = res.ReplyCode
	}
	return &webhook.Event{Type: webhook.Bounced, At: now.UTC(), DeliveryID: r.deliveryID, LogID: r.id, ProfileID: r.profileID,
		Address: r.address, Data: data}, old, to, nil
}

// complaint puts r's address on the denylist; the row stays as it is. It returns the event to
// emit, nil when the address was on the denylist already.
func (a *BounceApplier) complaint(ctx context.Context, tx *sql.Tx, r *bounceRow, res bounce.Result, now time.Time) (*webhook.Event, error) {
	if _, err := quarantine.NormalizeAddress(quarantine.Email, r.address); err != nil {
		a.log.Info("complaint about an address that cannot be kept; dropped", "log_id", r.id, "err", err)
		return nil, nil //nolint:nilerr // nothing to denylist
	}
	ft := res.FeedbackType
	if ft == "" {
		ft = "abuse"
	}
	// Whether the address was denylisted already is read on its locked row: two complaints at
	// once (a provider's notification delivered twice, to two nodes) emit one event.
	_, added, err := a.quar.Denylist(ctx, tx, quarantine.Email, r.address, "spam complaint ("+ft+")", now)
	if err != nil || !added {
		return nil, err
	}
	return &webhook.Event{Type: webhook.Complained, At: now.UTC(), DeliveryID: r.deliveryID, LogID: r.id, ProfileID: r.profileID,
		Address: r.address, Data: map[string]any{"feedback_type": ft}}, nil
}

func execCount(res sql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// unsubscribe treats mail to a List-Unsubscribe address as the recipient's opt-out, and
// reports whether the mail was one. A forged address is accepted and ignored.
func (a *BounceApplier) unsubscribe(ctx context.Context, envelopeTo []string) (bool, error) {
	if a.rp == nil || a.optOut == nil {
		return false, nil
	}
	for _, to := range envelopeTo {
		if !strings.HasPrefix(strings.ToLower(to), "u+") {
			continue
		}
		id, kind, ok := a.rp.Parse(to)
		if !ok || kind != 'u' {
			a.log.Warn("unsubscribe mail dropped: its address has a forged or damaged tag", "to", to)
			return true, nil
		}
		var delivery int64
		err := a.db.Read.QueryRowContext(ctx, `SELECT delivery_id FROM sending_log WHERE id = $1`, id).Scan(&delivery)
		if errors.Is(err, sql.ErrNoRows) {
			a.log.Info("unsubscribe mail for a sending-log row that no longer exists; dropped", "log_id", id)
			return true, nil
		}
		if err != nil {
			return true, fmt.Errorf("unsubscribe by mail: %w", err)
		}
		if err := a.optOut(ctx, id, delivery); err != nil {
			return true, fmt.Errorf("unsubscribe by mail: %w", err)
		}
		a.log.Info("unsubscribed by mail", "log_id", id, "delivery", delivery)
		return true, nil
	}
	return false, nil
}
