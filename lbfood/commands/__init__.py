"""The command functions of lbfood's CLI (registered on the Typer app, inside its error guard, by
lbfood/cli.py): each turns its options into an engine config, calls the engine and hands the result
to lbfood/output/."""
