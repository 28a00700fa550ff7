"""The training wing: set-up (`setup`), the loop (`loop`), fine-tuning's presets and L_LFF hook
(`finetune`), and the loss (`losses`). It never imports the evaluation wing."""
