package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// The bash and zsh scripts ask fleetroll itself for the words that may
// follow: urfave/cli answers a command line ending in
// --generate-bash-completion with the commands, or the flags when the word
// being completed starts with "-". fish's script lists them all at once.
const bashCompletion = `# bash completion for fleetroll: source <(fleetroll completion bash)
_fleetroll_complete() {
  local cur=${COMP_WORDS[COMP_CWORD]} words
  local -a line=("${COMP_WORDS[@]:0:COMP_CWORD}")
  if [[ $cur == -* ]]; then
    words=$("${line[@]}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    words=$("${line[@]}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o bashdefault -o default -F _fleetroll_complete fleetroll
`

const zshCompletion = `#compdef fleetroll
# zsh completion for fleetroll: source <(fleetroll completion zsh)
_fleetroll_complete() {
  local -a opts
  local cur=${words[CURRENT]}
  if [[ $cur == -* ]]; then
    opts=("${(@f)$(${words[1,CURRENT-1]} $cur --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[1,CURRENT-1]} --generate-bash-completion 2>/dev/null)}")
  fi
  if [[ -n ${opts[1]} ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
compdef _fleetroll_complete fleetroll
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		ArgsUsage: "bash|zsh|fish",
		Description: "Load it in the current shell:\n\n" +
			"   source <(fleetroll completion bash)     # bash\n" +
			"   source <(fleetroll completion zsh)      # zsh\n" +
			"   fleetroll completion fish | source      # fish",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErr("completion: want one shell: bash, zsh or fish")
			}
			switch sh := c.Args().First(); sh {
			case "bash":
				_, err := fmt.Fprint(c.App.Writer, bashCompletion)
				return err
			case "zsh":
				_, err := fmt.Fprint(c.App.Writer, zshCompletion)
				return err
			case "fish":
				script, err := c.App.ToFishCompletion()
				if err != nil {
					return fmt.Errorf("fish completion: %w", err)
				}
				_, err = fmt.Fprint(c.App.Writer, script)
				return err
			default:
				return usageErr("completion: unknown shell %q: want bash, zsh or fish", sh)
			}
		},
	}
}

// manCommand prints the manual page (roff) made from the commands and
// their flags; make man writes it to fleetroll.1. Hidden: a page, not a
// command an operator needs.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the manual page (roff)",
		Hidden: true,
		Action: func(c *cli.Context) error {
			page, err := c.App.ToManWithSection(1)
			if err != nil {
				return fmt.Errorf("man page: %w", err)
			}
			_, err = fmt.Fprint(c.App.Writer, page)
			return err
		},
	}
}
