"""The Textual app (`meshrender` with no arguments). It arrives with Step 6; until then the
package holds nothing and `meshrender` without a command prints its help."""
