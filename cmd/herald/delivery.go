package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/delivery"
)

// deliveryCmd gives the command line the delivery actions of the API. Each acts as the user
// named by --login, with that user's roles: the service refuses what the user may not do, in
// the same words as the API.
func deliveryCmd(cfg *config.Config) *cobra.Command {
	cmd := &cobra.Command{Use: "delivery", Short: "Create, prepare, approve, confirm and control deliveries"}
	var login string
	cmd.PersistentFlags().StringVar(&login, "login", "", "the user to act as (required for changes)")

	// run opens the database, finds the acting user and calls fn, printing its result as JSON.
	run := func(cmd *cobra.Command, needLogin bool, fn func(ctx context.Context, svc *delivery.Service, p auth.Principal) (any, error)) error {
		db, authSvc, err := openAuth(cmd.Context(), cfg)
		if err != nil {
			return err
		}
		defer db.Close()
		var p auth.Principal
		if needLogin {
			if login == "" {
				return fmt.Errorf("say which user acts with --login")
			}
			if p, err = authSvc.PrincipalFor(cmd.Context(), login); err != nil {
				return err
			}
		}
		out, err := fn(cmd.Context(), delivery.NewService(db, clock.Real{}, cfg.Logger()), p)
		if err != nil {
			return err
		}
		if out == nil {
			return nil
		}
		return writeJSON(cmd.OutOrStdout(), out)
	}
	idArg := func(args []string) (int64, error) {
		id, err := strconv.ParseInt(args[0], 10, 64)
		if err != nil || id <= 0 {
			return 0, fmt.Errorf("%q is not a delivery id", args[0])
		}
		return id, nil
	}
	readInput := func(file string, in *delivery.Input) error {
		var r io.Reader = os.Stdin
		if file != "-" {
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			r = f
		}
		dec := json.NewDecoder(r)
		dec.DisallowUnknownFields()
		if err := dec.Decode(in); err != nil {
			return fmt.Errorf("read the delivery from %s: %w", file, err)
		}
		return nil
	}

	var state string
	list := &cobra.Command{Use: "list", Short: "List deliveries, newest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd, false, func(ctx context.Context, svc *delivery.Service, _ auth.Principal) (any, error) {
				return svc.List(ctx, delivery.ListQuery{State: delivery.State(state)})
			})
		}}
	list.Flags().StringVar(&state, "state", "", "only deliveries in this state")

	show := &cobra.Command{Use: "show ID", Short: "Show a delivery: state, counts, preparation log", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := idArg(args)
			if err != nil {
				return err
			}
			return run(cmd, false, func(ctx context.Context, svc *delivery.Service, _ auth.Principal) (any, error) {
				return svc.Get(ctx, id)
			})
		}}

	var file string
	create := &cobra.Command{Use: "create --file DELIVERY.json", Short: "Create a delivery from the same JSON as POST /api/v1/deliveries", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var in delivery.Input
			if err := readInput(file, &in); err != nil {
				return err
			}
			return run(cmd, true, func(ctx context.Context, svc *delivery.Service, p auth.Principal) (any, error) {
				return svc.Create(ctx, p, in)
			})
		}}
	create.Flags().StringVar(&file, "file", "-", "the JSON file (- for standard input)")

	update := &cobra.Command{Use: "update ID --file CHANGES.json", Short: "Change a delivery (the same JSON as PATCH /api/v1/deliveries/{id})", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := idArg(args)
			if err != nil {
				return err
			}
			var in delivery.Input
			if err := readInput(file, &in); err != nil {
				return err
			}
			return run(cmd, true, func(ctx context.Context, svc *delivery.Service, p auth.Principal) (any, error) {
				return svc.Update(ctx, p, id, in)
			})
		}}
	update.Flags().StringVar(&file, "file", "-", "the JSON file (- for standard input)")

	// action makes a command that calls one service method on a delivery.
	action := func(use, short string, fn func(ctx context.Context, svc *delivery.Service, p auth.Principal, id int64) (any, error)) *cobra.Command {
		return &cobra.Command{Use: use + " ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				id, err := idArg(args)
				if err != nil {
					return err
				}
				return run(cmd, true, func(ctx context.Context, svc *delivery.Service, p auth.Principal) (any, error) {
					return fn(ctx, svc, p, id)
				})
			}}
	}
	var kind, comment string
	var to []string
	decide := func(d delivery.Decision) func(ctx context.Context, svc *delivery.Service, p auth.Principal, id int64) (any, error) {
		return func(ctx context.Context, svc *delivery.Service, p auth.Principal, id int64) (any, error) {
			return svc.Decide(ctx, p, id, delivery.ApprovalInput{Kind: delivery.ApprovalKind(kind), Decision: d, Comment: comment})
		}
	}
	approve := action("approve", "Approve the content or the target (role Approve deliveries)", decide(delivery.Approve))
	reject := action("reject", "Reject the content or the target, with a comment; the delivery returns to draft", decide(delivery.Reject))
	for _, c := range []*cobra.Command{approve, reject} {
		c.Flags().StringVar(&kind, "kind", "", "content or target")
		c.Flags().StringVar(&comment, "comment", "", "why")
	}
	proof := action("proof", "Send a proof to up to 100 addresses", func(ctx context.Context, svc *delivery.Service, p auth.Principal, id int64) (any, error) {
		return svc.Proof(ctx, p, id, to)
	})
	proof.Flags().StringArrayVar(&to, "to", nil, "an address (repeatable)")

	cmd.AddCommand(list, show, create, update,
		action("prepare", "Prepare: target, typology rules, exclusions, personalisation check; sends nothing",
			func(ctx context.Context, svc *delivery.Service, p auth.Principal, id int64) (any, error) {
				return svc.Prepare(ctx, p, id)
			}),
		approve, reject, proof,
		action("confirm", "Confirm the send (role Start deliveries): scheduled or sending",
			func(ctx context.Context, svc *delivery.Service, p auth.Principal, id int64) (any, error) {
				return svc.Confirm(ctx, p, id)
			}),
		action("pause", "Pause the send", func(ctx context.Context, svc *delivery.Service, p auth.Principal, id int64) (any, error) {
			return svc.Pause(ctx, p, id)
		}),
		action("resume", "Resume the send", func(ctx context.Context, svc *delivery.Service, p auth.Principal, id int64) (any, error) {
			return svc.Resume(ctx, p, id)
		}),
		action("stop", "Stop the send", func(ctx context.Context, svc *delivery.Service, p auth.Principal, id int64) (any, error) {
			return svc.Stop(ctx, p, id)
		}),
		action("delete", "Delete a delivery that was not confirmed", func(ctx context.Context, svc *delivery.Service, p auth.Principal, id int64) (any, error) {
			return nil, svc.Delete(ctx, p, id)
		}),
	)
	return cmd
}
