// Package tracking is the core of Herald's open, click, mirror-page and opt-out tracking: the signed
// tokens in /t/o/, /t/c/, /t/m/ and /t/u/ URLs, the URL builder used as the renderer's link rewriter,
// the per-delivery cache of click targets, the in-memory queue that writes hits in batches, and the
// classification of machine opens and clicks.
//
// The hot path (a pixel or a redirect) reads no database: Signer.Verify checks a token with an HMAC
// and allocates nothing, Targets answers clicks from memory after the first click on a delivery, and
// Recorder.Record only appends to a bounded in-memory queue. Everything that touches storage is behind
// a small interface (TargetSource, Sink) implemented elsewhere over SQL.
//
// # Personalised links
//
// A link whose href holds a template action (https://shop.example/p/{{.attributes.sku}}) renders to a
// different URL for each recipient. Herald signs that rendered URL into the recipient's click token
// (Ref.URL): the token grows by the URL's length times 4/3, but the click still needs no database
// read, and the redirect can only go where Herald itself rendered for that recipient and link. As
// defence in depth Targets also checks that the signed URL is http(s) and keeps the scheme and host
// the template fixes before its first action. Links without actions, the common case, carry no URL:
// their tokens stay under 40 characters and the URL comes from the delivery's target list.
//
// The alternative, a hash of the URL in the token checked against the template re-rendered at click
// time, needs the recipient's profile on every click, which is the database read this package avoids.
package tracking
