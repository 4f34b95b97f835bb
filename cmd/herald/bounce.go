package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/bounce"
)

func bounceCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bounce", Short: "Work with bounce messages"}
	cmd.AddCommand(&cobra.Command{
		Use:   "classify FILE...",
		Short: "Classify saved bounce messages: one JSON line per failed recipient",
		Long: `Classify runs Herald's bounce classifier on saved messages (RFC 5322 files: DSNs, the
non-standard bounces real servers send, ARF complaints, auto-replies) and prints one JSON line per
recipient with file, recipient, status (enhanced code), reason, and hard (true: hard bounce,
false: soft, null: not a failure, such as a complaint or an auto-reply).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			out := cmd.OutOrStdout()
			failed := 0
			for _, name := range files {
				f, err := os.Open(name)
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "herald: %v\n", err)
					failed++
					continue
				}
				rep, err := bounce.Parse(f)
				f.Close()
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "herald: %s: %v\n", name, err)
					failed++
					continue
				}
				if err := bounce.WriteJSONLines(out, name, rep); err != nil {
					return err
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d files could not be read", failed, len(files))
			}
			return nil
		},
	})
	return cmd
}
