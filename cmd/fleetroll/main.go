// Command fleetroll restarts the instances of a fleet service one at a time.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/urfave/cli/v2"
)

// fleetroll --version prints what fleetroll version prints (no -v: a
// short flag at the top would be mistaken for a command's).
func init() {
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Usage: "print the version, revision and Go version"}
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprintln(c.App.Writer, thisBuild()) }
}

// Exit codes.
const (
	exitOK          = 0
	exitFailed      = 1 // the roll failed or halted, or fleet could not be reached
	exitUsage       = 2 // bad flags, bad port list, unknown units
	exitRolledBack  = 3 // a deploy failed and every instance it moved runs the previous release again
	exitAborted     = 4 // the canaries were not promoted (abort, or a failed canary wait); the other instances were not touched
	exitRefused     = 5 // the deploy was refused: its release is quarantined; nothing was touched
	exitInterrupted = 130
)

// exitError carries an exit code through urfave/cli.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, a ...any) error {
	return &exitError{exitUsage, fmt.Errorf(format, a...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal cancels ctx; later ones stay caught (stop is only
	// called at exit) so that a unit being brought back up is not abandoned.
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the CLI and returns its exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	err := app.RunContext(ctx, moveFlagsFirst(app, args))
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "fleetroll:", err)
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case ctx.Err() != nil:
		return exitInterrupted
	default:
		// Errors urfave/cli raises itself are about flags and arguments.
		return exitUsage
	}
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:    "fleetroll",
		Usage:   "restart the instances of a fleet service one at a time, proving each restart",
		Version: thisBuild().Version,
		// Completion: a command line ending in --generate-bash-completion
		// is answered with the words that may follow (fleetroll completion).
		EnableBashCompletion: true,
		Writer:               stdout,
		ErrWriter:            stderr,
		// Exit codes are ours: never let urfave/cli call os.Exit.
		ExitErrHandler:  func(*cli.Context, error) {},
		CommandNotFound: func(c *cli.Context, name string) {},
		OnUsageError:    onUsageError,
		Commands: []*cli.Command{
			restartCommand(),
			deployCommand(),
			rollbackCommand(),
			recoverCommand(),
			serveCommand(),
			statusCommand(),
			decideCommand(fleetroll.DecisionPromote),
			decideCommand(fleetroll.DecisionAbort),
			releaseCommand(),
			completionCommand(),
			manCommand(),
			{
				Name:  "version",
				Usage: "print the version, revision and Go version",
				Action: func(c *cli.Context) error {
					_, err := fmt.Fprintln(c.App.Writer, thisBuild())
					return err
				},
			},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageErr("unknown command %q (try --help)", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
	}
}

// onUsageError turns flag parsing errors into one line and exit code 2,
// instead of urfave/cli's help dump.
func onUsageError(c *cli.Context, err error, _ bool) error {
	return usageErr("%s: %w (see fleetroll %s --help)", c.Command.Name, err, c.Command.Name)
}

// newLogger builds the slog logger for --log-level and --log-format.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usageErr("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, usageErr("--log-format %q: want text or json", format)
	}
}

// connect builds the logger and the fleet connection every command uses,
// with fleetFlags' certificate files for an https:// endpoint.
func connect(c *cli.Context, endpoint string, requestTimeout time.Duration) (*slog.Logger, fleetroll.Fleet, error) {
	logger, err := newLogger(c.App.ErrWriter, c.String("log-level"), c.String("log-format"))
	if err != nil {
		return nil, nil, err
	}
	files := fleetroll.TLSFiles{CA: c.String("ca-file"), Cert: c.String("cert-file"), Key: c.String("key-file")}
	fleet, err := fleetroll.ConnectTLS(endpoint, requestTimeout, files)
	if err != nil {
		return nil, nil, usageErr("--endpoint (--ca-file, --cert-file, --key-file): %w", err)
	}
	return logger, fleet, nil
}

// moveFlagsFirst lets flags follow positional arguments
// ("restart my-service --ports 8901"): urfave/cli v2 stops parsing flags at
// the first positional argument, so the command's flags are moved before it.
// Everything after "--" stays where it is.
func moveFlagsFirst(app *cli.App, args []string) []string {
	// A completion request must end in its flag, as the shell wrote it.
	if len(args) < 2 || args[len(args)-1] == "--generate-bash-completion" {
		return args
	}
	var cmd *cli.Command
	at := -1
	for i, a := range args[1:] {
		if !strings.HasPrefix(a, "-") {
			cmd, at = app.Command(a), i+1
			break
		}
	}
	if cmd == nil {
		return args
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	var flags, positional []string
	rest := args[at+1:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		switch {
		case a == "--":
			positional = append(positional, rest[i:]...)
			i = len(rest)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && takesValue[name] && i+1 < len(rest) {
				i++
				flags = append(flags, rest[i])
			}
		default:
			positional = append(positional, a)
		}
	}
	out := append([]string{}, args[:at+1]...)
	out = append(out, flags...)
	return append(out, positional...)
}

// outputOf is the command's --output: text or json (else a usage error).
func outputOf(c *cli.Context) (string, error) {
	out := c.String("output")
	if out != "text" && out != "json" {
		return "", usageErr("--output %q: want text or json", out)
	}
	return out, nil
}
