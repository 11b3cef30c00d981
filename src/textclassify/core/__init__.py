"""The original API's `textclassify.core` package; its names live in `textclassify.core.types`."""
