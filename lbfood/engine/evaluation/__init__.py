"""The evaluation wing: extraction and its cache (`features`, `store`), post-hoc scorers (`scorers`),
metrics, `report`, `score`, `calibrate` and the paper's benchmark files. It never imports training."""
