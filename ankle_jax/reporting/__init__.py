"""Independent writers of an Evaluation, each write(out_dir, evaluation,
context): files, markdown, figures, tensorboard, model_card, html; gallery
builds the error gallery (the one module here that runs a model). Shared,
no writer: format, document, plots, context, terminal. A writer never
imports another writer nor reads another's file."""
