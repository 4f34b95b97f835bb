package delivery

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/store/storetest"
)

// TestPersonalisationCheckListsEveryFailure checks that rendering each distinct tuple of the
// values a template reads once still fails, counts and lists every recipient whose tuple fails,
// and none that is excluded: many recipients share one failing tuple, another fails on a tuple
// of its own, excluded profiles share the failing tuple, and a good tuple is shared too.
func TestPersonalisationCheckListsEveryFailure(t *testing.T) {
	cases := []struct {
		name, subject, text string
	}{
		// Reads only attributes.codes (and a name): tuples repeat, one render per tuple.
		{"distinct tuples", "Hello {{.attributes.first_name}}", "Your second code: {{index .attributes.codes 1}}"},
		// Reads .email, unique per recipient: one render per recipient.
		{"one per recipient", "Hello {{.email}}", "Your second code: {{index .attributes.codes 1}}"},
		// Reads the codes under {{with}}: the list is read whole.
		{"read whole", "Hello", "{{with .attributes.codes}}Your second code: {{index . 1}}{{end}}"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Each(t, func(t *testing.T, db *store.DB) {
				s, _ := newService(t, db)
				var want []int64
				for i := range 260 {
					attrs := `{"first_name": "Ann", "codes": ["A", "B"]}`
					switch {
					case i%2 == 1:
						attrs = `{"first_name": "Ann", "codes": ["A"]}` // the shared failing tuple
					case i == 40:
						attrs = `{"first_name": "Bob", "codes": "X"}` // a failing tuple of its own
					}
					id := addProfile(t, db, fmt.Sprintf("p%d@example.com", i), attrs)
					if i%10 == 3 {
						exec(t, db, `UPDATE profiles SET opt_out_email = $1 WHERE id = $2`, true, id)
						continue // excluded: its failure does not count
					}
					if i%2 == 1 || i == 40 {
						want = append(want, id)
					}
				}
				aud := addAudience(t, db, "all", "")
				c := newsletter()
				c.Subject, c.Text = tc.subject, tc.text
				d := prepare(t, s, create(t, s, aud, func(in *Input) { in.Content = &c }).ID)
				if d.State != PrepareFailed || d.PrepLog.PersonalisationFailed != int64(len(want)) {
					t.Fatalf("state %s, %d failed; want %d", d.State, d.PrepLog.PersonalisationFailed, len(want))
				}
				var got []int64
				for _, f := range d.PrepLog.PersonalisationFailures {
					got = append(got, f.ProfileID)
					if !strings.Contains(f.Error, "index out of range") {
						t.Errorf("profile %d: error %q does not say why", f.ProfileID, f.Error)
					}
				}
				if !slices.Equal(got, want[:MaxPersonalisationFailures]) {
					t.Fatalf("listed %v\nwant %v", got, want[:MaxPersonalisationFailures])
				}
				if n := count(t, db, `SELECT count(*) FROM sending_log WHERE delivery_id = $1`, d.ID); n != 0 {
					t.Fatalf("%d sending log rows written for a failed preparation", n)
				}
			})
		})
	}
}
