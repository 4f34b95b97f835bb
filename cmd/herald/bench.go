package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/sending"
	"github.com/heraldhq/herald/internal/store"
)

// benchCmd runs the sending benchmark of DESIGN.md §4 and prints what it measured.
func benchCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Measure Herald's throughput on this machine"}
	var o sending.BenchOptions
	var cpuProfile, traceFile string
	var asJSON bool
	var runs int
	send := &cobra.Command{
		Use:   "send",
		Short: "Send N personalised, tracked messages end to end into an SMTP sink and compare with the transport's ceiling",
		Long: `Creates a fresh SQLite database (or, with --db postgres://..., a fresh schema in that
PostgreSQL database, dropped at the end), imports N generated profiles, prepares and confirms a
personalised, tracked delivery of about 2 KB of HTML, and times the sending engine from confirm
until the delivery is finished, against an SMTP sink on loopback: Herald's own in-process sink,
or --smtp (e.g. Postfix's smtp-sink). Just before and just after the send it pushes N ready-made
messages over the same number of pipelined connections to the same sink: the delivery's own
messages to its first recipients, rendered and built before the send, in turn, so that the sink
receives the same bytes as from the engine. The ceiling is their rate over both runs, so that a
machine whose speed drifts is compared with itself on both sides of the send. CPU time is the
whole process's, the in-process sink included (not a PostgreSQL server's); on a shared machine
every figure is a lower bound.`,
		Example: `  herald bench send --n 100000
  herald bench send --n 100000 --db 'postgres://herald@127.0.0.1:55432/herald?sslmode=disable'
  herald bench send --n 100000 --smtp 127.0.0.1:2525 --cpuprofile send.pprof`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runs > 1 {
				return benchRuns(cmd, o, runs, asJSON, cpuProfile != "" || traceFile != "")
			}
			for _, out := range []struct {
				path string
				w    *io.Writer
			}{{cpuProfile, &o.CPUProfile}, {traceFile, &o.Trace}} {
				if out.path == "" {
					continue
				}
				f, err := os.Create(out.path)
				if err != nil {
					return err
				}
				defer f.Close()
				*out.w = f
			}
			o.Progress = cmd.ErrOrStderr()
			res, err := sending.Bench(cmd.Context(), o)
			if err != nil {
				return err
			}
			return printResult(cmd.OutOrStdout(), res, asJSON)
		},
	}
	f := send.Flags()
	f.IntVar(&o.N, "n", 20_000, "number of recipients (and of ready-made messages for the ceiling)")
	f.StringVar(&o.SMTPAddr, "smtp", "", "host:port of an SMTP sink; empty starts an in-process sink")
	f.StringVar(&o.DBPath, "db", "", "SQLite file to create (must not exist), or a postgres:// URL to run in a fresh schema there; empty uses a temporary SQLite file")
	f.IntVar(&o.Conns, "conns", 0, "SMTP connections (max_conns); 0 means the relay default")
	f.IntVar(&o.Workers, "workers", 0, "engine workers; 0 means the engine default")
	f.IntVar(&o.BatchSize, "batch", 0, "engine batch size; 0 means the engine default")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the end-to-end phase to this file")
	f.StringVar(&traceFile, "trace", "", "write a runtime execution trace of the end-to-end phase to this file (go tool trace)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	f.IntVar(&runs, "runs", 1, "run the bench this many times, each on a fresh database, and sum up the ratios (one run's varies by a few hundredths)")
	cmd.AddCommand(send, benchTrackCmd())
	return cmd
}

// benchRuns runs the send bench runs times, each on a fresh database, and prints each run's line
// and the spread of their ratios and rates.
func benchRuns(cmd *cobra.Command, o sending.BenchOptions, runs int, asJSON, profiling bool) error {
	if profiling {
		return errors.New("bench send: --cpuprofile and --trace record one run; leave out --runs")
	}
	if o.DBPath != "" && !store.IsPostgres(o.DBPath) {
		return errors.New("bench send: --db names one SQLite file, which one run creates; leave it out with --runs (a postgres:// URL is fine)")
	}
	o.Progress = cmd.ErrOrStderr()
	var results []sending.BenchResult
	for k := range runs {
		fmt.Fprintf(cmd.ErrOrStderr(), "run %d of %d\n", k+1, runs)
		res, err := sending.Bench(cmd.Context(), o)
		if err != nil {
			return fmt.Errorf("run %d of %d: %w", k+1, runs, err)
		}
		results = append(results, res)
	}
	return printResult(cmd.OutOrStdout(), sending.Summarize(results), asJSON)
}
