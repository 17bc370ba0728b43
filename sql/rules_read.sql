-- One rule file as text, numbered by record (1-based after the header).
create or replace temp table rule_file as
with file as (
    select *
    from read_csv(
        $path, all_varchar = true, header = true, delim = ',', quote = '"', null_padding = true
    )
)

select row_number() over () as _row, * from file
