"""The original API's `textclassify.utils` package; see `textclassify.utils.fusion_utils`."""
