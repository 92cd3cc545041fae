"""Operations helpers: `kohaku serve` (a Prefect server and the deployments as child
processes: `serve`) and the small charts the flows show in the UI (`charts`). Prefect
itself runs only in the child processes: this package never imports it."""
