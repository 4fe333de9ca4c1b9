"""The console commands (`cifar-data`, `cifar-train`, `cifar-bench`, `cifar-tune`,
`cifar-notebook`): parse, build a Config, call the library; `common` holds the shared
flags and the exit codes."""
