package tracking

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math"
	"strings"
	"sync"

	"github.com/heraldhq/herald/internal/problem"
)

// Kind is what a token, and the hit it produces, is for.
type Kind uint8

// The kinds of token and hit. The zero Kind is invalid.
const (
	KindOpen   Kind = iota + 1 // the open pixel, /t/o/
	KindClick                  // a tracked link, /t/c/
	KindMirror                 // the mirror page (web version), /t/m/
	KindOptOut                 // the opt-out page and RFC 8058 one-click POST, /t/u/
)

// String returns the kind's name as stored in the tracking log.
func (k Kind) String() string {
	switch k {
	case KindOpen:
		return "open"
	case KindClick:
		return "click"
	case KindMirror:
		return "mirror"
	case KindOptOut:
		return "optout"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// NoLink is the link index of a token that names no link: open, mirror and opt-out tokens.
const NoLink uint16 = math.MaxUint16

// MinSecretLen is the shortest secret a Key accepts: 256 bits.
const MinSecretLen = 32

// MaxURLLen is the longest personalised URL a click token may carry. Longer rendered URLs are
// left untracked by the rewriter rather than producing tokens that mail clients and proxies cut.
const MaxURLLen = 2048

// macLen is the length of the truncated HMAC-SHA256 tag: 96 bits.
const macLen = 12

// Token layout, before base64url: key id (1 byte), header (1 byte: kind in bits 0-2, "has link"
// bit 3, "has URL" bit 4, bits 5-7 a format version that must be zero), uvarint log id, uvarint
// delivery id, uvarint link index if "has link", the URL's bytes to the end if "has URL", and the
// tag over everything before it.
const (
	hdrKindMask = 0x07
	hdrHasLink  = 0x08
	hdrHasURL   = 0x10
	hdrVersion  = 0xE0

	maxRawLen   = 2 + 2*binary.MaxVarintLen64 + 3 + MaxURLLen + macLen
	minRawLen   = 2 + 1 + 1 + macLen
	maxTokenLen = (maxRawLen*8 + 5) / 6
	minTokenLen = (minRawLen*8 + 5) / 6
	scratchLen  = 64 // raw bytes of any token without a URL fit in it
)

// ErrInvalidToken is the one answer to any token that was not produced by a current key: altered,
// truncated, extended, signed with another or a retired key, or not a token at all. Handlers answer
// it with 404 and never say which check failed.
var ErrInvalidToken = &problem.Error{Kind: problem.NotFound, Code: "not_found", Message: "this link is not valid"}

// Ref is what a token names.
type Ref struct {
	// LogID is the sending-log row: one recipient of one delivery.
	LogID int64
	// DeliveryID is the delivery the row belongs to; it selects the click targets.
	DeliveryID int64
	// Link is the link's index in the delivery's HTML (content.Template.Links) for a click, and
	// NoLink for every other kind.
	Link uint16
	// Kind says which endpoint the token is for; a token is refused by the others.
	Kind Kind
	// URL is, for a click on a personalised link only, the URL rendered for this recipient.
	URL string
	// KeyID is the key that signed the token. Verify sets it; Sign ignores it.
	KeyID uint8
}

// Key is one HMAC key of the tracking signer.
type Key struct {
	// ID is written in every token the key signs, so that verification picks the right key.
	ID uint8
	// Secret is at least MinSecretLen random bytes, kept in Herald's settings table.
	Secret []byte
}

// Signer signs and verifies tracking tokens. It holds one signing key and any number of
// verification keys, so that keys can rotate: add the new key for verification on every node,
// then make it the signing key, and retire the old one when the tracking retention of the
// deliveries it signed is over. It is safe for concurrent use.
//
// A token's tag is HMAC-SHA256 truncated to 96 bits, over a key derived from the secret for this
// purpose alone. An attacker without the key who submits q forged tokens succeeds with
// probability at most q/2^96 (plus HMAC-SHA256's negligible distinguishing advantage): at 20,000
// attempts a second for a century (about 2^46 attempts), under 2^-50.
type Signer struct {
	signing *macKey
	keys    [256]*macKey
}

// macKey is one key with a pool of ready HMAC states, since building one costs several
// allocations and Verify must allocate nothing.
type macKey struct {
	id   uint8
	pool sync.Pool // of *macState
}

// macState is the per-call working memory of a key.
type macState struct {
	h   hash.Hash
	sum [sha256.Size]byte
	raw [scratchLen]byte
}

func (k *macKey) get() *macState  { return k.pool.Get().(*macState) }
func (k *macKey) put(s *macState) { k.pool.Put(s) }

// NewSigner returns a signer that signs with signing and verifies tokens of signing and of every
// key in verify. Key ids must be distinct; every secret must be at least MinSecretLen bytes.
func NewSigner(signing Key, verify ...Key) (*Signer, error) {
	s := &Signer{}
	for i, k := range append([]Key{signing}, verify...) {
		if len(k.Secret) < MinSecretLen {
			return nil, fmt.Errorf("tracking: key %d: the secret is %d bytes; it must be at least %d", k.ID, len(k.Secret), MinSecretLen)
		}
		if s.keys[k.ID] != nil {
			return nil, fmt.Errorf("tracking: key id %d is given twice", k.ID)
		}
		// Derive the MAC key so that a secret shared with another use cannot make tokens.
		d := hmac.New(sha256.New, k.Secret)
		d.Write([]byte("herald tracking token v1"))
		derived := d.Sum(nil)
		mk := &macKey{id: k.ID}
		mk.pool.New = func() any { return &macState{h: hmac.New(sha256.New, derived)} }
		s.keys[k.ID] = mk
		if i == 0 {
			s.signing = mk
		}
	}
	return s, nil
}

// SigningKeyID is the id of the key new tokens are signed with.
func (s *Signer) SigningKeyID() uint8 { return s.signing.id }

// Sign returns the token for ref.
func (s *Signer) Sign(ref Ref) (string, error) {
	b, err := s.AppendToken(nil, ref)
	return string(b), err
}

// AppendToken appends ref's token to dst, so that a URL is built with one allocation.
func (s *Signer) AppendToken(dst []byte, ref Ref) ([]byte, error) {
	if err := checkRef(ref); err != nil {
		return dst, err
	}
	st := s.signing.get()
	defer s.signing.put(st)
	raw := st.raw[:0]
	if len(ref.URL) > 0 {
		raw = make([]byte, 0, 2+2*binary.MaxVarintLen64+3+len(ref.URL)+macLen)
	}
	hdr := byte(ref.Kind)
	if ref.Link != NoLink {
		hdr |= hdrHasLink
	}
	if ref.URL != "" {
		hdr |= hdrHasURL
	}
	raw = append(raw, s.signing.id, hdr)
	raw = binary.AppendUvarint(raw, uint64(ref.LogID))
	raw = binary.AppendUvarint(raw, uint64(ref.DeliveryID))
	if ref.Link != NoLink {
		raw = binary.AppendUvarint(raw, uint64(ref.Link))
	}
	raw = append(raw, ref.URL...)
	st.h.Reset()
	st.h.Write(raw)
	raw = append(raw, st.h.Sum(st.sum[:0])[:macLen]...)
	return base64.RawURLEncoding.AppendEncode(dst, raw), nil
}

// checkRef refuses what no token may name.
func checkRef(ref Ref) error {
	switch {
	case ref.LogID < 0 || ref.DeliveryID < 0:
		return fmt.Errorf("tracking: negative id (log %d, delivery %d)", ref.LogID, ref.DeliveryID)
	case ref.Kind < KindOpen || ref.Kind > KindOptOut:
		return fmt.Errorf("tracking: unknown token kind %d", ref.Kind)
	case ref.Kind == KindClick && ref.Link == NoLink:
		return errors.New("tracking: a click token needs a link index")
	case ref.Kind != KindClick && ref.Link != NoLink:
		return fmt.Errorf("tracking: a %s token names no link", ref.Kind)
	case ref.URL != "" && ref.Kind != KindClick:
		return fmt.Errorf("tracking: a %s token carries no URL", ref.Kind)
	case len(ref.URL) > MaxURLLen:
		return fmt.Errorf("tracking: the URL is %d bytes; a click token carries at most %d", len(ref.URL), MaxURLLen)
	case ref.URL != "" && !isHTTPURL(ref.URL):
		return errors.New("tracking: a click token carries only an http or https URL")
	}
	return nil
}

// isHTTPURL reports whether u starts with http:// or https:// (in any case) and holds no
// control character or space, so that it is safe in a Location header.
func isHTTPURL(u string) bool {
	if !hasPrefixFold(u, "https://") && !hasPrefixFold(u, "http://") {
		return false
	}
	for i := 0; i < len(u); i++ {
		if u[i] <= ' ' || u[i] == 0x7f {
			return false
		}
	}
	return true
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// Verify returns what token names, or ErrInvalidToken for anything Herald's current keys did not
// sign. The tag is compared in constant time. A token without a URL is verified without
// allocating.
func (s *Signer) Verify(token string) (Ref, error) {
	if len(token) < minTokenLen || len(token) > maxTokenLen {
		return Ref{}, ErrInvalidToken
	}
	// The key id is the first byte: the first 6 bits of token[0] and 2 of token[1].
	c0, c1 := b64dec[token[0]], b64dec[token[1]]
	if c0|c1 > 63 {
		return Ref{}, ErrInvalidToken
	}
	k := s.keys[c0<<2|c1>>4]
	if k == nil {
		return Ref{}, ErrInvalidToken
	}
	st := k.get()
	defer k.put(st)
	var raw []byte
	if n := len(token) * 6 / 8; n <= scratchLen {
		raw = st.raw[:0]
	} else {
		raw = make([]byte, 0, n)
	}
	raw, ok := appendDecode(raw, token)
	if !ok || len(raw) < minRawLen {
		return Ref{}, ErrInvalidToken
	}
	body, tag := raw[:len(raw)-macLen], raw[len(raw)-macLen:]
	st.h.Reset()
	st.h.Write(body)
	if subtle.ConstantTimeCompare(st.h.Sum(st.sum[:0])[:macLen], tag) != 1 {
		return Ref{}, ErrInvalidToken
	}
	ref, ok := parseBody(body)
	if !ok {
		return Ref{}, ErrInvalidToken
	}
	return ref, nil
}

// parseBody decodes an authenticated token body. Only Herald writes bodies that pass the tag, so
// a failure here means a bug or a format change, still answered as an invalid token.
func parseBody(b []byte) (Ref, bool) {
	hdr := b[1]
	ref := Ref{KeyID: b[0], Kind: Kind(hdr & hdrKindMask), Link: NoLink}
	if hdr&hdrVersion != 0 || ref.Kind < KindOpen || ref.Kind > KindOptOut {
		return Ref{}, false
	}
	i := 2
	log, n := binary.Uvarint(b[i:])
	if n <= 0 || log > math.MaxInt64 {
		return Ref{}, false
	}
	i += n
	del, n := binary.Uvarint(b[i:])
	if n <= 0 || del > math.MaxInt64 {
		return Ref{}, false
	}
	i += n
	ref.LogID, ref.DeliveryID = int64(log), int64(del)
	if hdr&hdrHasLink != 0 {
		link, n := binary.Uvarint(b[i:])
		if n <= 0 || link >= uint64(NoLink) {
			return Ref{}, false
		}
		i += n
		ref.Link = uint16(link)
	}
	if hdr&hdrHasURL != 0 {
		if i == len(b) {
			return Ref{}, false
		}
		ref.URL = string(b[i:])
		i = len(b)
	}
	if i != len(b) || (ref.Kind == KindClick) != (ref.Link != NoLink) || (ref.URL != "" && ref.Kind != KindClick) {
		return Ref{}, false
	}
	return ref, true
}

// b64dec maps a base64url character to its 6-bit value, and every other byte to 0xFF.
var b64dec = func() (t [256]byte) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i := range t {
		t[i] = 0xFF
	}
	for i := 0; i < len(alphabet); i++ {
		t[alphabet[i]] = byte(i)
	}
	return t
}()

// appendDecode appends the bytes of unpadded base64url s to dst. It is strict: a character outside
// the alphabet, a length that no byte count encodes, or non-zero unused bits in the last character
// all fail, so that every token has exactly one spelling. It reads s as a string so that Verify
// need not copy the token.
func appendDecode(dst []byte, s string) ([]byte, bool) {
	i := 0
	for ; i+4 <= len(s); i += 4 {
		a, b, c, d := b64dec[s[i]], b64dec[s[i+1]], b64dec[s[i+2]], b64dec[s[i+3]]
		if a|b|c|d > 63 {
			return dst, false
		}
		dst = append(dst, a<<2|b>>4, b<<4|c>>2, c<<6|d)
	}
	switch len(s) - i {
	case 0:
	case 2:
		a, b := b64dec[s[i]], b64dec[s[i+1]]
		if a|b > 63 || b&0x0F != 0 {
			return dst, false
		}
		dst = append(dst, a<<2|b>>4)
	case 3:
		a, b, c := b64dec[s[i]], b64dec[s[i+1]], b64dec[s[i+2]]
		if a|b|c > 63 || c&0x03 != 0 {
			return dst, false
		}
		dst = append(dst, a<<2|b>>4, b<<4|c>>2)
	default:
		return dst, false
	}
	return dst, true
}
