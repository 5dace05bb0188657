package main

import "github.com/spf13/cobra"

// addCLICommands adds the operator CLI's commands.
func addCLICommands(root *cobra.Command, g *globals) {}
