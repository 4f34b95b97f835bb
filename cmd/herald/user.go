package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/audit"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/config"
)

// cliActor names the operator in the audit log: the command line acts with the rights of
// whoever can open the database.
func cliActor() audit.Actor {
	name := "cli"
	if u, err := user.Current(); err == nil {
		name = "cli:" + u.Username
	}
	return audit.Actor{Name: name}
}

func userCmd(cfg *config.Config) *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Manage Herald users"}
	var login, display string
	var roles, groups []string
	var pwStdin bool

	add := &cobra.Command{
		Use:   "add",
		Short: "Add a user",
		Example: `  echo 'a long password' | herald user add --login marie --role "Start deliveries" --password-stdin
  herald user add --login ops --group "Standard users" --password-stdin < pw.txt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !pwStdin {
				return fmt.Errorf("give the password on standard input with --password-stdin (it is never taken as an argument)")
			}
			pw, err := readPassword(cmd.InOrStdin())
			if err != nil {
				return err
			}
			db, svc, err := openAuth(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer db.Close()
			u, err := svc.CreateUser(cmd.Context(), cliActor(), auth.NewUser{Login: login, DisplayName: display, Password: pw, Roles: roles, Groups: groups})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added user %q (id %d) with roles: %s\n", u.Login, u.ID, joinRoles(u.Roles))
			return nil
		},
	}
	add.Flags().StringVar(&login, "login", "", "the user's login (required)")
	add.Flags().StringVar(&display, "name", "", "the user's display name")
	add.Flags().StringArrayVar(&roles, "role", nil, `a role to give (repeatable): "Administration", "Prepare deliveries", "Approve deliveries", "Start deliveries", "Generic import", "Export", "Workflow"`)
	add.Flags().StringArrayVar(&groups, "group", nil, `a group to join (repeatable): "Administrators", "Standard users"`)
	add.Flags().BoolVar(&pwStdin, "password-stdin", false, "read the password from standard input")
	_ = add.MarkFlagRequired("login")

	list := &cobra.Command{
		Use:   "list",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, svc, err := openAuth(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer db.Close()
			users, err := svc.ListUsers(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tLOGIN\tSTATE\tGROUPS\tROLES")
			for _, u := range users {
				state := "enabled"
				if u.Disabled {
					state = "disabled"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", u.ID, u.Login, state, strings.Join(u.Groups, ", "), joinRoles(u.Roles))
			}
			return tw.Flush()
		},
	}

	var setGroups bool
	setRoles := &cobra.Command{
		Use:   "set-roles",
		Short: "Replace a user's direct roles (and, with --group, its groups)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, svc, err := openAuth(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer db.Close()
			u, err := svc.UserByLogin(cmd.Context(), login)
			if err != nil {
				return err
			}
			up := auth.UserUpdate{Roles: &roles}
			if roles == nil {
				up.Roles = &[]string{}
			}
			if setGroups = cmd.Flags().Changed("group"); setGroups {
				up.Groups = &groups
			}
			u, err = svc.UpdateUser(cmd.Context(), cliActor(), u.ID, up)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %q now has roles: %s\n", u.Login, joinRoles(u.Roles))
			return nil
		},
	}
	setRoles.Flags().StringVar(&login, "login", "", "the user's login (required)")
	setRoles.Flags().StringArrayVar(&roles, "role", nil, "a role to give (repeatable); none removes every direct role")
	setRoles.Flags().StringArrayVar(&groups, "group", nil, "a group (repeatable); when given, replaces the user's groups")
	_ = setRoles.MarkFlagRequired("login")

	cmd.AddCommand(add, list, setRoles, enableCmd(cfg, true), enableCmd(cfg, false))
	return cmd
}

func enableCmd(cfg *config.Config, disable bool) *cobra.Command {
	var login string
	name, short := "enable", "Enable a disabled user"
	if disable {
		name, short = "disable", "Disable a user: its sessions end and its API tokens stop working"
	}
	c := &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, svc, err := openAuth(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer db.Close()
			u, err := svc.UserByLogin(cmd.Context(), login)
			if err != nil {
				return err
			}
			if _, err := svc.UpdateUser(cmd.Context(), cliActor(), u.ID, auth.UserUpdate{Disabled: &disable}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %q %sd\n", u.Login, name)
			return nil
		},
	}
	c.Flags().StringVar(&login, "login", "", "the user's login (required)")
	_ = c.MarkFlagRequired("login")
	return c
}

func readPassword(r io.Reader) (string, error) {
	if f, ok := r.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			fmt.Fprint(os.Stderr, "Password: ")
		}
	}
	line, err := bufio.NewReader(io.LimitReader(r, 4096)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("read the password from standard input: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", fmt.Errorf("no password on standard input")
	}
	return pw, nil
}

func joinRoles(rs auth.Roles) string {
	if len(rs) == 0 {
		return "(none)"
	}
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

func tokenCmd(cfg *config.Config) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage API tokens"}
	var login, name string
	var expires time.Duration
	create := &cobra.Command{
		Use:   "create",
		Short: "Print a new API token for a user (shown only once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, svc, err := openAuth(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer db.Close()
			secret, t, err := svc.CreateToken(cmd.Context(), cliActor(), login, name, expires)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), secret)
			fmt.Fprintf(cmd.ErrOrStderr(), "token %d for %q; keep it safe, it is not shown again\n", t.ID, t.Login)
			return nil
		},
	}
	create.Flags().StringVar(&login, "login", "", "the user the token acts as (required)")
	create.Flags().StringVar(&name, "name", "", "a name to recognise the token by")
	create.Flags().DurationVar(&expires, "expires", 0, "lifetime, e.g. 720h; 0: until revoked")
	_ = create.MarkFlagRequired("login")

	var id int64
	revoke := &cobra.Command{
		Use:   "revoke",
		Short: "Revoke an API token by id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, svc, err := openAuth(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer db.Close()
			if err := svc.RevokeToken(cmd.Context(), cliActor(), id); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %d revoked\n", id)
			return nil
		},
	}
	revoke.Flags().Int64Var(&id, "id", 0, "the token's id (see herald token list)")
	_ = revoke.MarkFlagRequired("id")

	list := &cobra.Command{
		Use:   "list",
		Short: "List API tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, svc, err := openAuth(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer db.Close()
			toks, err := svc.ListTokens(cmd.Context(), login)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tLOGIN\tNAME\tPREFIX\tSTATE\tCREATED")
			for _, t := range toks {
				state := "active"
				switch {
				case t.RevokedAt != nil:
					state = "revoked"
				case t.ExpiresAt != nil && t.ExpiresAt.Before(time.Now()):
					state = "expired"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s…\t%s\t%s\n", t.ID, t.Login, t.Name, t.Prefix, state, t.CreatedAt.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&login, "login", "", "only this user's tokens")
	cmd.AddCommand(create, revoke, list)
	return cmd
}
