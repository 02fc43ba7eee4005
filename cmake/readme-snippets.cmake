# Writes every ```cpp block of a Markdown file into one header: its #include
# lines first, each block's body in a namespace named after the block, so that
# a test can compile them all and call into them by name.
#
# Each block is named by an HTML comment on the line just above its opening
# fence (invisible when the Markdown is rendered):
#
#   <!-- snippet: quick_start -->
#   ```cpp
#   ...
#   ```
#
# lands in `namespace readme_snippet_quick_start`. A name is a C++ identifier.
# A block without a name, a name used twice, or a name with no block under it
# stops the configure step. A block ends at the first line that starts with ```.
function(coropool_extract_readme_snippets markdown output)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${markdown}")
  file(READ "${markdown}" text)
  # CMake lists split on ';', which C++ is full of: hide them while the text is cut up.
  string(REPLACE ";" "@SEMICOLON@" text "${text}")

  # Every line that names a snippet must stand right above a block's fence.
  set(rest "\n${text}")
  set(line 0)
  string(FIND "${rest}" "\n<!-- snippet:" at)
  while(NOT at EQUAL -1)
    string(SUBSTRING "${rest}" 0 ${at} before)
    string(REGEX MATCHALL "\n" newlines "${before}")
    list(LENGTH newlines count)
    math(EXPR line "${line} + ${count} + 1")
    string(SUBSTRING "${rest}" ${at} -1 rest)
    if(NOT rest MATCHES "^\n<!-- snippet: [A-Za-z_][A-Za-z0-9_]* -->\n```cpp\n")
      message(FATAL_ERROR "${markdown}:${line}: a snippet's name must read `<!-- snippet: name -->`, the name a C++ "
                          "identifier, on the line just above its ```cpp fence")
    endif()
    string(SUBSTRING "${rest}" 1 -1 rest)
    string(FIND "${rest}" "\n<!-- snippet:" at)
  endwhile()

  set(includes "")
  set(bodies "")
  set(names "")
  set(rest "${text}")
  set(line 1)
  string(FIND "${rest}" "```cpp\n" start)
  while(NOT start EQUAL -1)
    string(SUBSTRING "${rest}" 0 ${start} before)
    string(REGEX MATCHALL "\n" newlines "${before}")
    list(LENGTH newlines count)
    math(EXPR line "${line} + ${count}")
    if(NOT before MATCHES "(^|\n)<!-- snippet: ([A-Za-z_][A-Za-z0-9_]*) -->\n$")
      message(FATAL_ERROR "${markdown}:${line}: this ```cpp block has no name: put `<!-- snippet: some_name -->` on "
                          "the line above it (test_readme.cpp calls it as readme_snippet_some_name::...)")
    endif()
    set(name "${CMAKE_MATCH_2}")
    if(name IN_LIST names)
      message(FATAL_ERROR "${markdown}:${line}: a second snippet named `${name}`: each name may be used once")
    endif()
    list(APPEND names "${name}")

    math(EXPR body_start "${start} + 7")
    string(SUBSTRING "${rest}" ${body_start} -1 rest)
    string(FIND "\n${rest}" "\n```" end)
    if(end EQUAL -1)
      message(FATAL_ERROR "${markdown}:${line}: the snippet `${name}` has no closing ```")
    endif()
    string(SUBSTRING "${rest}" 0 ${end} block)
    math(EXPR after_end "${end} + 3")
    string(SUBSTRING "${rest}" ${after_end} -1 rest)
    string(REGEX MATCHALL "\n" newlines "${block}")
    list(LENGTH newlines count)
    math(EXPR line "${line} + ${count} + 1")

    string(REGEX MATCHALL "#include [^\n]*\n" block_includes "${block}")
    foreach(include_line IN LISTS block_includes)
      string(APPEND includes "${include_line}")
    endforeach()
    string(REGEX REPLACE "#include [^\n]*\n" "" block "${block}")
    string(APPEND bodies "namespace readme_snippet_${name} {\n${block}}  // namespace readme_snippet_${name}\n\n")
    string(FIND "${rest}" "```cpp\n" start)
  endwhile()

  set(content "// Generated from ${markdown}: edit the README, not this file.\n#pragma once\n\n${includes}\n${bodies}")
  string(REPLACE "@SEMICOLON@" ";" content "${content}")
  file(CONFIGURE OUTPUT "${output}" CONTENT "${content}" @ONLY)
endfunction()
