"""The GRAFS search (seeds/001 Algorithm 1) on any model.

``search(model, train_data, val_data)`` (:mod:`grafs.searching.entry`, ``grafs.search``) picks
the settings, the budget and among restarts, checks the formula and gives the verdict
(:mod:`~grafs.searching.scratch`, :mod:`~grafs.searching.verdict`); one search is a loop over
the steps in :mod:`grafs.searching.loop` over a :class:`Searcher`
(:mod:`~grafs.searching.searcher`: the search as an object, which your own training loop can
drive too: ``grafs.Searcher``);
the parts it uses live beside it, one job each: :mod:`~grafs.searching.sites` (swapping a
model's activation modules), :mod:`~grafs.searching.data` (seeded, resumable batches and the
75/25 split), :mod:`~grafs.searching.step` (one arch + weight step), :mod:`~grafs.searching.result`
(:class:`SearchResult`), :mod:`~grafs.searching.checkpoint`, :mod:`~grafs.searching.rng`,
:mod:`~grafs.searching.restarts` and :mod:`~grafs.searching.distributed`.
"""
from grafs.searching.data import resolve_device, split_dataset
from grafs.searching.entry import search
from grafs.searching.restarts import search_restarts
from grafs.searching.result import SearchResult
from grafs.searching.rng import seed_everything
from grafs.searching.searcher import Searcher
from grafs.searching.sites import DEFAULT_TYPES, Act, SearchSite, replace_activations
from grafs.searching.verdict import Verdict

__all__ = ["search", "search_restarts", "Searcher", "SearchResult", "Verdict", "Act", "SearchSite", "replace_activations",
           "resolve_device", "split_dataset", "seed_everything", "DEFAULT_TYPES"]
