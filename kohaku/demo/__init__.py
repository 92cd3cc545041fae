"""The bundled demo and the synthetic data the tests use: a danbooru2023-shaped SQLite
database (`synth`), danbooru `/posts.json` pages from it (`api_pages`), a picture per post
and a local server of them (`images`), and the demo's folder, config and closing summary
(`run`, what `kohaku demo` prepares and prints)."""
