"""PTG-RM (prior-guided refinement, PTGRM_REFERENCE): a small module that refines a base restorer's output with
the help of a frozen prior network. No side effects on import; see docs/refine.md."""
