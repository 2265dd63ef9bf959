"""Token-exact prompts: corpora, needles and tasks, haystacks, chat templates, tokenizers."""
