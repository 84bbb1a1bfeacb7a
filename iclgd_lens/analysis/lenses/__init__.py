"""Lenses: the runs they read (`lens_runs`), ICL's implicit weight update per layer (`implicit_update`) and chained
over the whole model (`implicit_patch`) with its transfer to other queries (`patch_transfer`), task vectors and
residual shifts (`task_vectors`), their nulls (`lens_nulls`), and every measure per subject (`values`)."""
