"""Training objectives, one per file: supervised Dice+CE, partial-label BCE+Dice, Volume Fusion."""
