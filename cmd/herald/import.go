package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/profile"
)

func importCmd(cfg *config.Config) *cobra.Command {
	cmd := &cobra.Command{Use: "import", Short: "Import data"}
	var asJSON bool
	profiles := &cobra.Command{
		Use:   "profiles FILE.csv",
		Short: "Import profiles from a CSV file (the same import as POST /api/v1/profiles/import)",
		Long: `The first line names the columns. email, external_id, phone, time_zone, locale,
opt_out_email, opt_out_sms and opt_out_push are profile fields; any other column is an
attribute, typed with a suffix (age:number, vip:bool, birthday:date; default string). Profiles
are matched by external_id when given, else by email. Empty cells keep the stored value, so
importing the same file twice changes nothing. Bad lines are reported with their line number
and column; the good ones are kept. Use - to read standard input.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var in io.Reader = cmd.InOrStdin()
			var size int64
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				if st, err := f.Stat(); err == nil {
					size = st.Size()
				}
				in = f
			}
			db, _, err := openAuth(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer db.Close()
			svc := profile.NewService(db, clock.Real{}, cfg.Logger())
			bar := newProgress(cmd.ErrOrStderr(), size)
			res, err := svc.Import(cmd.Context(), cliActor(), in, profile.ImportOptions{Progress: bar.update})
			bar.done()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(out, res)
			}
			fmt.Fprintf(out, "read %d lines in %.1fs: %d created, %d updated, %d unchanged, %d rejected\n",
				res.Read, res.Seconds, res.Created, res.Updated, res.Unchanged, res.Rejected)
			for _, e := range res.Errors {
				fmt.Fprintln(out, "  "+e.String())
			}
			if res.ErrorsTruncated {
				fmt.Fprintf(out, "  ... and %d more rejected lines\n", res.Rejected-len(res.Errors))
			}
			return nil
		},
	}
	profiles.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.AddCommand(profiles)
	return cmd
}

// progress draws a one-line progress bar on a terminal, and nothing elsewhere.
type progress struct {
	w     io.Writer
	size  int64
	tty   bool
	start time.Time
	last  time.Time
}

func newProgress(w io.Writer, size int64) *progress {
	p := &progress{w: w, size: size, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) update(r profile.ImportResult, bytesRead int64) {
	if !p.tty || time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	rate := float64(r.Read) / time.Since(p.start).Seconds()
	if p.size > 0 {
		frac := min(float64(bytesRead)/float64(p.size), 1)
		n := int(frac * 30)
		fmt.Fprintf(p.w, "\r[%s%s] %3.0f%%  %d lines  %.0f lines/s ", strings.Repeat("=", n), strings.Repeat(" ", 30-n), frac*100, r.Read, rate)
		return
	}
	fmt.Fprintf(p.w, "\r%d lines  %.0f lines/s ", r.Read, rate)
}

func (p *progress) done() {
	if p.tty && !p.last.IsZero() {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
