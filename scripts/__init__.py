"""The console commands (`cifar-data`, `cifar-train`, `cifar-eval`, `cifar-export`,
`cifar-predict`, `cifar-bench`, `cifar-tune`, `cifar-notebook`): parse, build a Config,
call the library; `common` holds the shared flags and maps errors to exit codes."""
