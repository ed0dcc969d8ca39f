"""The search-time runtime: search spaces (space), the relaxed DrNAS cell (cell), its batched
Dirichlet sampling (sampling) and the progressive-shrinking schedule (schedule)."""
